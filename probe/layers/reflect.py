"""The reflect layer: `reflect://HOST[:PORT]?shape=S`, a call-like flow to a `probe reflect`
server (probe/reflect/) in one datagram shape, and what the reflector counted of it; with
`?transport=tls`, a TLS connection naming a platform and a transfer each way over it.

Against third-party servers a probe can only infer; against a reflector of the research team's
it measures: the same server and port answer STUN-shaped, RTP-shaped and random datagrams alike,
so a difference between shapes is the censor's doing, and so is a difference between a call
port and a control port (classify/calls.py reads them together). Each request carries what the
flow has sent, each reply what the reflector has received (probe/wire/echo.py). When answers
stop, a few requests of the same session on a fresh source port ask the reflector how many of
the flow's requests reached it: all of them, and the silence is on the way back ("down"); about
as many as were answered, and our packets stopped arriving ("up").

The token (settings.reflector.token_file) tags every request, so a reflector run with one
answers us and ignores strangers.
"""

from __future__ import annotations

import time
from pathlib import Path

from probe.catalog import Job
from probe.failures import (
    CONNECTION_RESET,
    CUTOFF,
    PROTOCOL_ERROR,
    STALL,
    UNTRUSTED_CERTIFICATE,
    Failed,
    classify_exception,
    classify_udp_error,
)
from probe.layers import Context, Layer, tls
from probe.layers.callflow import run_flow
from probe.layers.dns import resolve
from probe.layers.stun import FRESH, SLACK_S, flow_facts
from probe.observations import Facts, Observation, ReflectFacts, Sample, TlsFacts, TransferFacts
from probe.wire import echo
from probe.wire.echo import PUBLIC_KEY, EchoFlow, EchoReply, Shape
from probe.wire.flow import CallPlan

_KEY = "reflect.key"


def key_of(ctx: Context) -> bytes:
    """The tag key: the team's token when the catalog names one, else the public key."""
    key = ctx.cache.get(_KEY)
    if not isinstance(key, bytes):
        reflector = ctx.settings.reflector
        key = PUBLIC_KEY
        if reflector is not None and reflector.token_file:
            lines = Path(reflector.token_file).read_text(encoding="utf-8").split()
            key = lines[0].encode() if lines else PUBLIC_KEY
        ctx.cache[_KEY] = key
    return key


def plan_of(job: Job) -> CallPlan:
    return job.call or CallPlan()


def budget(job: Job) -> float:
    plan = plan_of(job)
    return job.timeout * 3 + plan.duration + plan.wait + FRESH.duration + FRESH.wait + SLACK_S


async def measure(job: Job, ctx: Context) -> Sample:
    if job.endpoint.query.get("transport") == "tls":
        return await measure_tls(job, ctx)
    sample = Sample()
    address = await resolve(job, ctx, sample)
    if address is None:
        return sample
    port = job.endpoint.port
    assert port is not None, "the catalog gives reflect:// a default port"
    shape = Shape(job.endpoint.query.get("shape", "stun"))
    sample.add(await exchange(address, port, shape, plan_of(job), job.timeout, key_of(ctx),
                              include_ip=ctx.include_ip))
    return sample


async def exchange(address: str, port: int, shape: Shape, plan: CallPlan, timeout: float,
                   key: bytes, *, include_ip: bool = False) -> ReflectFacts:
    start = time.perf_counter()
    echo = EchoFlow(shape, key)
    try:
        run = await run_flow(address, port, plan, silence=timeout, shape=echo)
    except OSError as exc:
        failure, message = classify_udp_error(exc)
        return ReflectFacts(ok=False, ms=round((time.perf_counter() - start) * 1000, 3),
                            failure=failure, error=message, port=port, shape=shape.value)
    facts = flow_facts(run, port, plan, timeout, call=True, include_ip=include_ip,
                       took=time.perf_counter() - start, what=f"{shape.value} echo requests")
    stats = run.stats
    received = answered = None
    if echo.counters is not None:
        received, answered = echo.counters.received_packets, echo.counters.sent_packets + 1
    direction = None
    if stats.answered and stats.answered < stats.sent:
        # Answers stopped or went missing: ask on a fresh source port, same session.
        asked = EchoFlow(shape, key, session=echo.session, first_seq=stats.sent)
        try:
            await run_flow(address, port, FRESH, silence=min(timeout, FRESH.wait), shape=asked)
        except OSError:
            pass
        counted = _main_flow_received(asked.replies, stats.sent)
        if counted is not None:
            received = counted
            if facts["failure"] == CUTOFF:
                # most of ours arrived: the answers were lost on the way back
                direction = "down" if counted > (stats.answered + stats.sent) / 2 else "up"
        if asked.replies:
            facts.update(fresh_flow_sent=asked.sent_packets, fresh_flow_answered=len(
                {r.seq for r in asked.replies}))
    return ReflectFacts(**facts, shape=shape.value, reflector_received=received,
                        reflector_answered=answered, direction=direction)


def _main_flow_received(replies: list[EchoReply], sent: int) -> int | None:
    """How many of the flow's `sent` requests reached the reflector, from the replies to the
    counters query: each reply counts the query's requests up to it, so the most any reply
    leaves for the flow is what the flow delivered (a lost query request only lowers it)."""
    counts = [r.received_packets - (r.seq - sent + 1) for r in replies if r.seq >= sent]
    return min(max(counts), sent) if counts else None


# --- TLS: the platform's name on an address nobody else uses ---------------------------------


async def measure_tls(job: Job, ctx: Context) -> Sample:
    """A TLS handshake with the reflector naming a platform (`sni:`), after the harmless-name
    control to the same address and port (the tls layer's): a name cut here is filtered
    wherever it goes; a name that passes here is not what blocks the platform. The reflector's
    self-signed certificate is taken when its key is the one the catalog pins. Then TRANSFER
    bytes down and up in small and large records: a freeze after N bytes keyed on the name
    shows here too, with its direction."""
    sample = Sample()
    wire = await tls.open_tls(job, ctx, sample, verify=False)
    if wire is None:
        return sample
    try:
        pinned = ctx.settings.reflector.fingerprint if ctx.settings.reflector else None
        facts = sample.get(TlsFacts)
        if pinned and facts is not None and facts.spki_sha256 != pinned:
            sample.add(facts.model_copy(update={
                "ok": False, "failure": UNTRUSTED_CERTIFICATE,
                "error": f"the certificate's key ({facts.spki_sha256}) is not the reflector's "
                         f"pinned one: something else answers for it (interception?)"}))
            return sample
        sample.add(await transfer(wire, key_of(ctx), job.timeout))
    finally:
        wire.abort()
    return sample


TRANSFER = 64 * 1024  # each way, per record size: past the ~16 KB freezes of 2025 (CENSORSHIP.md)
RECORDS = (1024, 16 * 1024)  # small records (a packet-count freeze), then large (a byte count)


async def transfer(wire: tls.Wire, key: bytes, timeout: float) -> TransferFacts:
    """TRANSFER bytes down, then up, in each of RECORDS, on one connection: the HELLO with
    the team's tag, DOWNLOADs, then DATA frames and a REPORT of what the reflector counted.
    Silence for `timeout` ends it: a stall, after so many bytes, in one direction."""
    start = time.perf_counter()
    reader = echo.FrameReader()
    frames: list[echo.Frame] = []
    wire.idle = timeout  # a read with no byte for `timeout` raises TimeoutError
    down = up = 0
    sent = 0  # frame bytes we sent, to compare with the reflector's count

    async def send(data: bytes) -> None:
        nonlocal sent
        sent += len(data)
        await wire.write(data)

    async def next_frame() -> echo.Frame:
        while not frames:
            data = await wire.read()
            if not data:
                raise Failed(CONNECTION_RESET, "the reflector closed the connection")
            frames.extend(reader.feed(data))
        return frames.pop(0)

    def facts(failure: str | None = None, error: str | None = None,
              direction: str | None = None, refused: bool | None = None) -> TransferFacts:
        return TransferFacts(ok=failure is None, ms=round((time.perf_counter() - start) * 1000, 3),
                             failure=failure, error=error, chunks=list(RECORDS), total=TRANSFER,
                             down=down, up=up, direction=direction, refused=refused)

    direction = "down"  # where a silence would be
    try:
        await send(echo.hello(echo.new_session(), key))
        if (await next_frame()).type != echo.FrameType.HELLO_OK:
            raise Failed(PROTOCOL_ERROR, "the reflector did not accept our HELLO")
        for size in RECORDS:
            await send(echo.download_request(TRANSFER, size))
            while (frame := await next_frame()).type == echo.FrameType.DOWNLOAD_DATA:
                down += len(frame.payload)
            if frame.type != echo.FrameType.DOWNLOAD_DONE:
                raise Failed(PROTOCOL_ERROR, f"a {frame.type.name} frame amid a download")
            status, _ = echo.parse_download_done(frame.payload)
            if status == echo.DownloadStatus.REFUSED:
                return facts(error="the reflector's limits refused the download (not the "
                                   "network's doing)", refused=True)
        direction = "up"
        for size in RECORDS:
            for offset in range(0, TRANSFER, size):
                await send(echo.encode_frame(echo.FrameType.DATA,
                                             bytes(min(size, TRANSFER - offset))))
        await send(echo.report_request())
        frame = await next_frame()
        if frame.type != echo.FrameType.REPORT_REPLY:
            raise Failed(PROTOCOL_ERROR, f"a {frame.type.name} frame for our REPORT")
        counted = echo.parse_counters(frame.payload).received_bytes
        if counted < sent:  # TCP delivers in order: short only if the reflector lost count
            raise Failed(PROTOCOL_ERROR, f"the reflector counted {counted} of our {sent} bytes")
        up = 2 * TRANSFER
    except TimeoutError:
        moved = f"{down} of {2 * TRANSFER} bytes down" if direction == "down" else \
            f"{2 * TRANSFER} bytes down; our {2 * TRANSFER} bytes up never acknowledged"
        return facts(STALL, f"the transfer froze {direction}: {moved}, then nothing for "
                            f"{timeout:g} s", direction)
    except (OSError, Failed, echo.EchoCodecError) as exc:
        failure, message = classify_exception(exc)
        return facts(failure or PROTOCOL_ERROR, message, direction)
    return facts()


def budget_of(job: Job) -> float:
    """A flow's budget; a TLS target's: the tls layer's, and the transfer (two downloads, a
    report, each silent for at most a timeout, with 2 x TRANSFER to move each way)."""
    if job.endpoint.query.get("transport") == "tls":
        return tls.budget(job) + job.timeout * 4
    return budget(job)


async def diagnose(job: Job, ctx: Context, observation: Observation) -> list[Facts]:
    if job.endpoint.query.get("transport") == "tls":
        return await tls.diagnose(job, ctx, observation)
    return []


LAYER = Layer(measure=measure, budget=budget_of, diagnose=diagnose,
              one_exchange=lambda job: job.endpoint.query.get("transport") != "tls")
