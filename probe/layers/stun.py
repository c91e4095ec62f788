"""The stun layer: `stun://HOST[:PORT]`, a train of STUN Binding requests over UDP.

A call's media path starts with exactly this exchange, and censors classify it (CENSORSHIP.md:
Russia 2025 drops STUN, or loses part of it, or lets the first packets through and then cuts the
flow). So the layer does not stop at the first answer: it sends `job.attempts` requests (or, with
`sustain:`, a few per second for that long), each with a fresh transaction id, spaced on a fixed
schedule, on one connected UDP socket (connected, so an ICMP port unreachable comes back as an
error instead of silence). Each request waits up to `job.timeout` for its own answer.

Facts recorded in the `stun` phase: requests sent, answered (in time), lost (not answered in
time), late (answered after their wait), duplicates, malformed datagrams, ICMP errors, the RTTs,
a pattern of the exchange (one character per request: `+` answered, `L` late, `.` nothing), and
for sustained exchanges when answers stopped. The classifier judges loss against thresholds and
baselines; this layer only calls a cut-off a cut-off (answers, then silence to the end).

Privacy: the mapped address in an answer is the user's public address. It is compared with the
socket's local address (`nat`: whether they differ) and dropped; neither address is recorded,
unless the user passes `--include-ip` (then `mapped_address` keeps the public one).
"""

from __future__ import annotations

import asyncio
import math
import socket
import statistics
import time
from typing import Any, cast

from probe.catalog import Job
from probe.failures import CUTOFF, TIMEOUT, classify_udp_error
from probe.layers import Context, Layer
from probe.layers.dns import resolve
from probe.layers.udp import open_udp
from probe.observations import Sample, StunFacts
from probe.wire import stun

SPACING_S = 0.2  # between requests: a train, not a burst a rate limiter would cut
SUSTAIN_RATE = 4.0  # requests per second in a sustained exchange
CUTOFF_MIN_SILENT = 5  # a cut-off needs at least this many unanswered requests at the end...
CUTOFF_TAIL = 0.3  # ...covering at least this share of the exchange
CUTOFF_CHANCE = 0.001  # ...and the loss before it would produce such a tail this rarely
SLACK_S = 1.0

ANSWERED, LATE, NOTHING = "+", "L", "."


def schedule(job: Job) -> tuple[int, float]:
    """(number of requests, seconds between them) for a job."""
    sustain = job.target.sustain
    if sustain:
        return max(job.attempts, math.ceil(sustain * SUSTAIN_RATE)), 1.0 / SUSTAIN_RATE
    return job.attempts, SPACING_S


def budget(job: Job) -> float:
    """The engine's deadline for the whole exchange: name resolution, the train, the last wait."""
    count, spacing = schedule(job)
    return job.timeout + (count - 1) * spacing + job.timeout + SLACK_S


def is_cutoff(pattern: str) -> bool:
    """Answers at first, then silence to the end: at least CUTOFF_MIN_SILENT requests and
    CUTOFF_TAIL of the exchange unanswered after the last answer, and a silent tail that the
    loss seen before it would explain less than once in CUTOFF_CHANCE exchanges (at 50 % loss
    six lost in a row happen one time in 64: that is bad luck, not a cut-off)."""
    last = pattern.rfind(ANSWERED)
    silent = len(pattern) - 1 - last
    if last < 0 or silent < CUTOFF_MIN_SILENT or silent < CUTOFF_TAIL * len(pattern):
        return False
    before = pattern[: last + 1]
    loss = sum(1 for c in before if c != ANSWERED) / len(before)
    return loss == 0 or silent >= math.log(CUTOFF_CHANCE) / math.log(loss)


class _Exchange(asyncio.DatagramProtocol):
    """Matches answers to requests by transaction id and timestamps them (loop time)."""

    def __init__(self, count: int, timeout: float) -> None:
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.DatagramTransport | None = None
        self.index: dict[bytes, int] = {}  # transaction id -> request number
        self.sent_at: list[float] = []
        self.answered_at: list[float | None] = [None] * count
        self.late: set[int] = set()
        self.answered = 0
        self.count = count
        self.duplicates = 0
        self.malformed = 0  # not STUN, or not an answer to any request of ours
        self.error_codes: list[int] = []
        self.errors: list[OSError] = []
        self.mapped_address_returned = False
        self.nat: bool | None = None
        self.mapped: tuple[Any, int] | None = None  # (address, port): kept only with --include-ip
        self.done = self.loop.create_future()  # set when nothing more is worth waiting for

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def send(self) -> None:
        assert self.transport is not None
        request = stun.binding_request()
        self.index[request.transaction_id] = len(self.sent_at)
        self.sent_at.append(self.loop.time())
        self.transport.sendto(stun.encode_message(request))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        now = self.loop.time()
        try:
            message = stun.decode_message(data)
        except stun.StunCodecError:
            self.malformed += 1
            return
        number = self.index.get(message.transaction_id)
        if number is None or not message.is_response or message.method != stun.Method.BINDING:
            self.malformed += 1
            return
        if self.answered_at[number] is not None or number in self.late:
            self.duplicates += 1
            return
        if now - self.sent_at[number] > self.timeout:
            self.late.add(number)
            return
        self.answered_at[number] = now
        self.answered += 1
        error = message.find(stun.ErrorCode)
        if error is not None:
            self.error_codes.append(error.code)  # still an answer: a STUN server is there
        self._compare_mapped(message)
        if self.answered == self.count:
            self.finish()

    def _compare_mapped(self, message: stun.Message) -> None:
        mapped = message.find(stun.XorMappedAddress) or message.find(stun.MappedAddress)
        if mapped is None:
            return
        self.mapped_address_returned = True
        if self.nat is None and self.transport is not None:
            self.mapped = (mapped.address, mapped.port)
            local = self.transport.get_extra_info("sockname")
            family = socket.AF_INET6 if mapped.address.version == 6 else socket.AF_INET
            try:  # packed bytes: no parsing of the local address on every answer's path
                local_packed = socket.inet_pton(family, str(local[0]).split("%")[0])
            except OSError:  # an IPv4 answer on an IPv6 socket: certainly translated
                local_packed = b""
            self.nat = (mapped.address.packed, mapped.port) != (local_packed, int(local[1]))

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, OSError):
            self.errors.append(exc)
        if len(self.sent_at) == self.count and not self.answered:
            self.finish()  # nothing answered and the network says why: stop waiting

    def pattern(self) -> str:
        return "".join(
            ANSWERED if t is not None else LATE if i in self.late else NOTHING
            for i, t in enumerate(self.answered_at[: len(self.sent_at)])
        )


def _address(mapped: tuple[Any, int] | None) -> str | None:
    return None if mapped is None else f"{mapped[0]}:{mapped[1]}"


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


async def exchange(address: str, port: int, count: int, spacing: float, timeout: float,
                   include_ip: bool = False) -> StunFacts:
    """Send `count` Binding requests `spacing` apart and record what came back."""
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    try:
        transport, protocol = open_udp(lambda: _Exchange(count, timeout), address, port)
    except OSError as exc:  # no route, no IPv6 here...
        failure, message = classify_udp_error(exc)
        return StunFacts(ok=False, ms=_ms(time.perf_counter() - start), failure=failure,
                     error=message, port=port)
    try:
        first = loop.time()
        for number in range(count):
            delay = first + number * spacing - loop.time()
            if number:  # the first goes at once: a sleep(0) would cost a loop turn per target
                await asyncio.sleep(max(0.0, delay))
            protocol.send()
        # The last request gets its full wait; earlier ones have had theirs already.
        if protocol.errors and not protocol.answered:
            protocol.finish()
        timer = loop.call_later(timeout, protocol.finish)  # lighter than asyncio.timeout
        try:
            await protocol.done
        finally:
            timer.cancel()
    finally:
        transport.close()
    return _phase(protocol, port, spacing, timeout, time.perf_counter() - start, first,
                  include_ip)


def _phase(
    protocol: _Exchange, port: int, spacing: float, timeout: float, took: float, first: float,
    include_ip: bool = False,
) -> StunFacts:
    sent = len(protocol.sent_at)
    answered = protocol.answered
    rtts = [_ms(t - s) for t, s in zip(protocol.answered_at, protocol.sent_at) if t is not None]
    pattern = protocol.pattern()
    facts: dict[str, Any] = {
        "port": port,
        "sent": sent,
        "answered": answered,
        "lost": sent - answered,
        "loss": round((sent - answered) / sent, 4) if sent else None,
        "late": len(protocol.late),
        "duplicates": protocol.duplicates,
        "malformed": protocol.malformed,
        "icmp_errors": len(protocol.errors),
        "error_responses": len(protocol.error_codes),
        "rtt_ms": rtts,
        "rtt_median_ms": round(statistics.median(rtts), 3) if rtts else None,
        "rtt_min_ms": min(rtts) if rtts else None,
        "pattern": pattern,
        "spacing_ms": _ms(spacing),
        "elapsed_ms": _ms(took),
        "mapped_address_returned": protocol.mapped_address_returned,
        # The user's public address: recorded only when they asked for it (--include-ip).
        **({"mapped_address": _address(protocol.mapped)} if include_ip else {}),
        "nat": protocol.nat,
    }
    if protocol.error_codes:
        facts["error_code"] = protocol.error_codes[0]
    last = pattern.rfind(ANSWERED)
    if answered and last < sent - 1:
        answered_at = protocol.answered_at[last]
        assert answered_at is not None
        facts["answered_until_ms"] = _ms(answered_at - first)
        facts["silent_from_ms"] = _ms(protocol.sent_at[last + 1] - first)
    if not answered:
        if protocol.errors:
            failure, message = classify_udp_error(protocol.errors[0])
        else:
            failure = TIMEOUT
            message = f"no answer to {sent} STUN Binding requests within {timeout:g} s each"
        return StunFacts(ok=False, ms=_ms(took), failure=failure, error=message, **facts)
    if is_cutoff(pattern):
        silence = protocol.sent_at[-1] - protocol.sent_at[last + 1] + timeout
        message = (f"answered {answered} of the first {last + 1} requests, then none of the "
                   f"last {sent - 1 - last} ({silence:.1f} s of silence)")
        return StunFacts(ok=False, ms=_ms(took), failure=CUTOFF, error=message, **facts)
    return StunFacts(ok=True, ms=facts["rtt_median_ms"], **facts)


async def measure(job: Job, ctx: Context) -> Sample:
    sample = Sample()
    address = await resolve(job, ctx, sample)
    if address is None:
        return sample
    port = job.endpoint.port
    assert port is not None, "the catalog gives stun:// a default port"
    count, spacing = schedule(job)
    sample.add(await exchange(address, port, count, spacing, job.timeout,
                                        ctx.include_ip))
    return sample


LAYER = Layer(measure=measure, budget=budget, one_exchange=True)
