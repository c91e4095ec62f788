"""The stun layer: `stun://HOST[:PORT]`, STUN Binding requests over UDP on one flow.

A call's media path starts with exactly this exchange, and censors classify it (CENSORSHIP.md:
Russia 2025 drops STUN, loses part of it, lets a flow's first packets through and then freezes
it). One UDP 5-tuple (a connected socket, so an ICMP port unreachable comes back as an error
instead of silence) carries one of three exchanges, all run by probe/wire/flow.py:

* a train: `attempts` requests 200 ms apart, each waiting up to `timeout` for its answer;
* a sustained exchange (`sustain: 20s`): four requests a second for that long;
* a call-like flow, for targets of a feature named `calls` (or with `call:` options): requests
  padded to a voice frame's size at a voice packet rate for a few seconds (wire/flow.CallPlan:
  50/s, 160 bytes, 5 s), long enough to cross a freeze after ~25 packets or ~16 KB. When such
  a flow answers and then goes silent, a fresh flow (a new source port) to the same address
  tells a frozen flow from a blocked address.

A silent path costs one timeout, not the whole exchange: the flow stops when nothing at all
has answered within `timeout` of the first request. Facts: what was sent and answered, late,
lost, in how many bursts, RTT percentiles, jitter (RFC 3550), when answers stopped (packets and
bytes sent before the silence, seconds in) and the exchange's pattern. The classifier judges
loss, cut-off and call quality; this layer only calls a cut-off a cut-off.

Privacy: the mapped address in an answer is the user's public address. It is compared with the
socket's local address (`nat`: whether they differ), told to the run's scrubber (so no server
text can echo it into a result) and dropped; neither is recorded unless the user passes
`--include-ip` (then `mapped_address` keeps the public one).
"""

from __future__ import annotations

import math
import socket
import time
from typing import Any

from probe.catalog import Job
from probe.failures import CUTOFF, TIMEOUT, classify_udp_error
from probe.layers import Context, Layer
from probe.layers.callflow import FlowRun, run_flow
from probe.layers.dns import resolve
from probe.observations import Sample, StunFacts
from probe.scrub import remember
from probe.wire import stun
from probe.wire.flow import CallPlan, expand

SPACING_S = 0.2  # between a train's requests: a train, not a burst a rate limiter would cut
SUSTAIN_RATE = 4.0  # requests per second in a sustained exchange
BARE = 28  # bytes of a Binding request with FINGERPRINT: trains send them unpadded
# After a cut-off: a few requests on a fresh source port, at the call's pace.
FRESH = CallPlan(rate=50.0, size=BARE, duration=0.1, wait=1.0)
SLACK_S = 1.0


def plan_of(job: Job) -> CallPlan:
    """The exchange a job asks for: its call-like flow, a sustained exchange, or a train."""
    if job.call is not None:
        return job.call
    sustain = job.target.sustain
    if sustain:
        count = max(job.attempts, math.ceil(sustain * SUSTAIN_RATE))
        return CallPlan(rate=SUSTAIN_RATE, size=BARE, duration=count / SUSTAIN_RATE,
                        wait=job.timeout)
    return CallPlan(rate=1 / SPACING_S, size=BARE, duration=job.attempts * SPACING_S,
                    wait=job.timeout)


def budget(job: Job) -> float:
    """The engine's deadline for the whole exchange: name resolution (up to three timeouts),
    the exchange and its last wait, and a fresh flow after a cut-off."""
    plan = plan_of(job)
    fresh = FRESH.duration + FRESH.wait if job.call is not None else 0.0
    return job.timeout * 3 + plan.duration + plan.wait + fresh + SLACK_S


async def exchange(address: str, port: int, plan: CallPlan, timeout: float, *,
                   call: bool = False, include_ip: bool = False) -> StunFacts:
    """One exchange to address:port, as the `stun` facts (a cut-off is a failure)."""
    start = time.perf_counter()
    try:
        run = await run_flow(address, port, plan, silence=timeout)
    except OSError as exc:  # no route, no IPv6 here...
        failure, message = classify_udp_error(exc)
        return StunFacts(ok=False, ms=_ms(time.perf_counter() - start), failure=failure,
                         error=message, port=port)
    facts = StunFacts(**flow_facts(run, port, plan, timeout, call=call, include_ip=include_ip,
                                   took=time.perf_counter() - start))
    if call and facts.failure == CUTOFF:
        fresh = await _fresh_flow(address, port, timeout)
        if fresh is not None:
            facts = facts.model_copy(update={"fresh_flow_sent": fresh.stats.sent,
                                             "fresh_flow_answered": fresh.stats.answered})
    return facts


async def _fresh_flow(address: str, port: int, timeout: float) -> FlowRun | None:
    """A few requests on a new source port: answered again, the flow was frozen, not the
    address."""
    try:
        return await run_flow(address, port, FRESH, silence=min(timeout, FRESH.wait))
    except OSError:
        return None


def flow_facts(run: FlowRun, port: int, plan: CallPlan, timeout: float, *, call: bool,
               include_ip: bool, took: float, what: str = "STUN Binding requests"
               ) -> dict[str, Any]:
    """An exchange's facts (ExchangeFacts' fields, ok and failure included), for the stun
    layer's StunFacts and the reflect layer's ReflectFacts alike."""
    stats = run.stats
    mapped, nat = _mapped(run)
    if mapped is not None:
        remember(mapped[0], mapped[1])  # the user's public address and port: ours to hide
    facts: dict[str, Any] = {
        "port": port,
        "sent": stats.sent,
        "answered": stats.answered,
        "lost": stats.lost,
        "loss": round(stats.loss, 4) if stats.loss is not None else None,
        "late": stats.late,
        "duplicates": stats.duplicates,
        "malformed": stats.malformed,
        "icmp_errors": stats.icmp_errors,
        "error_responses": stats.error_responses,
        "error_code": stats.error_code,
        "rtt_median_ms": stats.rtt_p50_ms,
        "rtt_min_ms": stats.rtt_min_ms,
        "spacing_ms": _ms(1 / plan.rate),
        "elapsed_ms": _ms(took),
        "silent_from_ms": (round(stats.silent_after_s * 1000, 3)
                           if stats.silent_after_s is not None else None),
        "mapped_address_returned": mapped is not None,
        "nat": nat,
        "ended": stats.ended,
    }
    if include_ip and mapped is not None:  # the user asked to keep their public address
        facts["mapped_address"] = f"{mapped[0]}:{mapped[1]}"
    if call:
        facts.update(
            call=True, rate=plan.rate, size=plan.size, pattern=stats.pattern,
            rtt_p90_ms=stats.rtt_p90_ms, rtt_p99_ms=stats.rtt_p99_ms,
            rtt_max_ms=stats.rtt_max_ms, jitter_ms=stats.jitter_ms,
            loss_bursts=stats.loss_bursts, max_burst=stats.max_burst,
            bytes_sent=stats.bytes_sent, bytes_received=stats.bytes_received,
            silent_after_packets=stats.silent_after_packets,
            silent_after_bytes=stats.silent_after_bytes,
            silent_after_bytes_received=stats.silent_after_bytes_received,
            silent_after_s=stats.silent_after_s,
            answered_per_s=list(stats.answered_per_s))
    else:  # a short train: every RTT, and the pattern one character a request
        facts.update(rtt_ms=run.rtts_ms, pattern=expand(stats.pattern),
                     jitter_ms=stats.jitter_ms)
    if not stats.answered:
        if stats.icmp_failure is not None:
            failure, message = stats.icmp_failure, run.icmp_error or stats.icmp_failure
        else:
            failure = TIMEOUT
            message = f"no answer to {stats.sent} {what} within {timeout:g} s"
        return {"ok": False, "ms": _ms(took), "failure": failure, "error": message, **facts}
    if stats.cutoff:
        assert stats.silent_after_packets is not None and stats.silent_after_s is not None
        silent = stats.sent - stats.silent_after_packets
        message = (f"answered {stats.answered} of the first {stats.silent_after_packets} "
                   f"requests, then none of the last {silent} "
                   f"({stats.span_s - stats.silent_after_s + plan.wait:.1f} s of silence)")
        return {"ok": False, "ms": _ms(took), "failure": CUTOFF, "error": message, **facts}
    return {"ok": True, "ms": stats.rtt_p50_ms, **facts}


def _mapped(run: FlowRun) -> tuple[tuple[str, int] | None, bool | None]:
    """The mapped address of the first answer, and whether it differs from the socket's own
    (a NAT between us and the server); decoded once, here, and never stored as it is."""
    if run.first_answer is None:
        return None, None
    try:
        message = stun.decode_message(run.first_answer)
    except stun.StunCodecError:
        return None, None
    mapped = message.find(stun.XorMappedAddress) or message.find(stun.MappedAddress)
    if mapped is None:
        return None, None
    local = run.sockname
    nat = None
    if local is not None:
        family = socket.AF_INET6 if mapped.address.version == 6 else socket.AF_INET
        try:  # packed bytes: no parsing of the local address's text
            local_packed = socket.inet_pton(family, str(local[0]).split("%")[0])
        except OSError:  # an IPv4 answer on an IPv6 socket: certainly translated
            local_packed = b""
        nat = (mapped.address.packed, mapped.port) != (local_packed, int(local[1]))
    return (str(mapped.address), mapped.port), nat


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


async def measure(job: Job, ctx: Context) -> Sample:
    sample = Sample()
    address = await resolve(job, ctx, sample)
    if address is None:
        return sample
    port = job.endpoint.port
    assert port is not None, "the catalog gives stun:// a default port"
    sample.add(await exchange(address, port, plan_of(job), job.timeout,
                              call=job.call is not None, include_ip=ctx.include_ip))
    return sample


LAYER = Layer(measure=measure, budget=budget, one_exchange=lambda job: True)
