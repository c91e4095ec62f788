"""The quality of a target whose every sample worked: redirect, throughput, loss, call, RTT.

Each check returns findings: a problem (a finding with a reason) or a note. The checks run in
the order their problems rank, and the first problem names the verdict; the others and every
note follow in `detail`. Figures are compared with the baseline's, then the catalog's `expect`,
then the built-in thresholds (`probe/thresholds.py`, which documents each).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from probe.classify import udp
from probe.classify.tls import certificate_change
from probe.classify.verdict import Finding, Subject, Verdict, join
from probe.metrics import Transfer, median, observation_metrics, sample_rtt, sample_transfer
from probe.observations import HttpFacts, Observation, Sample, TlsFacts
from probe.results import TargetResult
from probe.thresholds import Thresholds


def rate_words(bps: float) -> str:
    if bps >= 1e6:
        return f"{bps / 1e6:.1f} Mbit/s"
    return f"{bps / 1e3:.0f} kbit/s"


def site(host: str) -> str:
    """The last two labels of a name (a rough registrable domain); an address as it is."""
    host = host.rstrip(".").lower()
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        return ".".join(host.split(".")[-2:])


def redirect_of(sample: Sample, host: str) -> tuple[int, str] | None:
    """(status, location host) when a working https sample was redirected to another site."""
    http = sample.get(HttpFacts)
    if http is None or not http.ok or http.status is None:
        return None
    if not 300 <= http.status < 400 or not http.location_host:
        return None
    location = http.location_host
    return None if site(location) == site(host) else (http.status, location)


def _first_ok(target: TargetResult | None) -> Sample | None:
    if target is None:
        return None
    return next((s for s in target.observation.samples if s.ok), None)


def _redirect(s: Subject, obs: Observation, base: TargetResult | None,
              th: Thresholds) -> list[Finding]:
    moved = redirect_of(obs.samples[0], s.host)
    if moved is None:
        return []
    status, location = moved
    before = _first_ok(base)
    http = before.get(HttpFacts) if before is not None else None
    was = http.status if http is not None else None
    if was is not None and 200 <= was < 300:
        return [Finding(f"HTTP {status} redirect to {location}; the baseline got HTTP {was}: "
                        f"a block page", "blocked", "http.status")]
    return [Finding(f"HTTP {status} redirect to {location}")]


def _measurable(sample: Sample, t: Transfer, th: Thresholds) -> bool:
    rtt = sample_rtt(sample)
    return t.transfer_ms >= th.min_transfer_ms and (
        rtt is None or t.transfer_ms >= th.transfer_rtts * rtt)


def _baseline_rate(base: TargetResult | None, th: Thresholds) -> float | None:
    """The baseline's rate, a too-short transfer counting as at most what it would have had
    over min_transfer_ms (its true rate is at least that: a lower bound, so conservative)."""
    if base is None:
        return None
    rates = []
    for sample in base.observation.samples:
        t = sample_transfer(sample)
        if t is None:
            continue
        if _measurable(sample, t, th):
            rates.append(t.rate_bps)
        else:
            rates.append(min(t.rate_bps, t.bytes * 8 / (th.min_transfer_ms / 1000)))
    return median(rates)


def rtt_rose(now: float | None, before: float | None, th: Thresholds) -> bool:
    return (now is not None and before is not None and now > before * th.rtt_ratio
            and now - before > th.rtt_margin_ms)


def _floors(s: Subject, base: TargetResult | None, th: Thresholds
            ) -> list[tuple[float, str, float]]:
    """(floor, what, its figure) for each floor a transfer below is throttled: the baseline's
    (its rate x throttle_ratio), the catalog's expect.min_throughput, else the built-in one."""
    floors = []
    before = _baseline_rate(base, th)
    if before is not None:
        floors.append((before * th.throttle_ratio, "the baseline's", before))
    if "min_throughput_bps" in s.expect:
        expected = s.expect["min_throughput_bps"]
        floors.append((expected, "expect.min_throughput", expected))
    if not floors:
        floors.append((th.min_throughput_bps, "the built-in floor", th.min_throughput_bps))
    return floors


def _measured(obs: Observation, th: Thresholds) -> list[tuple[Sample, Transfer]]:
    return [(smp, t) for smp in obs.samples
            if (t := sample_transfer(smp)) is not None and _measurable(smp, t, th)]


def throttle_settled(s: Subject, obs: Observation, base: TargetResult | None,
                     th: Thresholds) -> bool:
    """A transfer measured far below its floor (under half of it, over a whole measurable
    transfer): http.throttled whatever further samples would show, so they need not be taken
    (a throttled 1 MiB transfer is three windows of three timeouts each)."""
    measured = _measured(obs, th)
    if not measured:
        return False
    floor = max(floor for floor, _, _ in _floors(s, base, th))
    return max(t.rate_bps for _, t in measured) * 2 < floor


def _throughput(s: Subject, obs: Observation, base: TargetResult | None,
                th: Thresholds) -> list[Finding]:
    measured = _measured(obs, th)
    if not measured:
        return []
    rate = median(t.rate_bps for _, t in measured)
    assert rate is not None
    why = [f"{figure / rate:.0f}x below {what} {rate_words(figure)}" if what == "the baseline's"
           else f"below {what} {rate_words(figure)}"
           for floor, what, figure in _floors(s, base, th) if rate < floor]
    if not why:
        return []
    took = median(t.transfer_ms for _, t in measured) or 0.0
    size = median(t.bytes for _, t in measured) or 0
    text = (f"throughput {rate_words(rate)} ({size:.0f} bytes in {took:.0f} ms, "
            f"{len(measured)} sample{'s' if len(measured) > 1 else ''}), " + "; ".join(why))
    now_rtt = observation_metrics(obs).rtt_ms
    was_rtt = observation_metrics(base.observation).rtt_ms if base is not None else None
    if now_rtt is not None and was_rtt is not None:
        if rtt_rose(now_rtt, was_rtt, th):
            text += (f"; RTT rose from {was_rtt:.0f} to {now_rtt:.0f} ms: a shaper queueing "
                     f"packets")
        else:
            text += (f"; RTT not raised ({now_rtt:.0f} ms, baseline {was_rtt:.0f} ms): a "
                     f"policer dropping packets")
    elif now_rtt is not None:
        text += f"; RTT {now_rtt:.0f} ms (no baseline RTT to tell a policer from a shaper)"
    return [Finding(text, "degraded", "http.throttled")]


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _latency(s: Subject, obs: Observation, base: TargetResult | None,
             th: Thresholds) -> list[Finding]:
    rtt = observation_metrics(obs).rtt_ms
    if rtt is None:
        return []
    before = observation_metrics(base.observation).rtt_ms if base is not None else None
    if rtt_rose(rtt, before, th):
        assert before is not None
        text = (f"RTT median {_ms(rtt)} ms, {rtt / before:.0f}x the baseline's {_ms(before)} "
                f"ms" if before >= 1 else
                f"RTT median {_ms(rtt)} ms, the baseline's under 1 ms")
    elif "max_rtt_ms" in s.expect and rtt > s.expect["max_rtt_ms"]:
        text = f"RTT median {rtt:.0f} ms, above expect.max_rtt {s.expect['max_rtt_ms']:.0f} ms"
    elif before is None and "max_rtt_ms" not in s.expect and rtt > th.max_rtt_ms:
        text = f"RTT median {rtt:.0f} ms, above the built-in ceiling {th.max_rtt_ms:.0f} ms"
    else:
        return []
    return [Finding(text, "degraded", "latency.high")]


def _certificate(s: Subject, obs: Observation, base: TargetResult | None,
                 th: Thresholds) -> list[Finding]:
    note = certificate_change(obs.samples[0].get(TlsFacts), base)
    return [Finding(note)] if note else []


Check = Callable[[Subject, Observation, "TargetResult | None", Thresholds], list[Finding]]

# The checks, in the order their problems rank: the first problem names the verdict.
CHECKS: tuple[Check, ...] = (_redirect, _throughput, udp.call_quality, udp.loss, _latency,
                             _certificate)


def ok_detail(sample: Sample) -> str:
    return ", ".join(f"{layer} {p.ms:.0f} ms" for layer, p in sample.phases.items()
                     if p.ms is not None)


def judge_quality(subject: Subject, observation: Observation, base: TargetResult | None,
                  th: Thresholds) -> Verdict:
    """The verdict of a target whose every sample worked: ok, or what the checks found."""
    found = [f for check in CHECKS for f in check(subject, observation, base, th)]
    problems = [f for f in found if f.reason is not None]
    notes = [f.text for f in found if f.reason is None]
    facts = ok_detail(observation.samples[0])
    if not problems:
        return Verdict("ok", "ok", join(facts, *notes))
    first = problems[0]
    assert first.reason is not None and first.status is not None
    rest = [f.text for f in problems[1:]]
    return Verdict(first.status, first.reason, join(first.text, *rest, *notes, facts))
