"""Verdicts from observations: pure functions, no I/O, tested with tables.

Strategy, per target (rules as tables, numbers from `probe/thresholds.py`, passed in):
1. A sample's first failing layer and its failure fact give a reason code (REASONS).
2. The dns phase carries its own judgement (classify_dns.py): it comes first.
3. Some samples failing, others working: `degraded`, with the count; never `blocked`.
   Every sample failing: `blocked` with the commonest reason, refined by the diagnosis steps
   (DIAGNOSIS: the SNI swap, the version-negotiation ping, the name's other addresses, the
   presented certificate), each step named in `detail`. Failing the same way in the baseline:
   `inconclusive target.down`.
4. Every sample working: the quality checks (QUALITY: redirect, throughput, loss, RTT) against
   the baseline's figures, the catalog's `expect`, then the built-in thresholds.
Controls decide the network (down, captive portal, allowlist), which may turn failing targets
inconclusive; features and platforms fold their members' verdicts. A saved run holds every
fact this needs, so `rejudge` gives a saved run exactly the verdicts a live run would get.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from probe import classify_dns
from probe import failures as F
from probe.catalog import Job
from probe.metrics import (
    Transfer,
    median,
    observation_metrics,
    sample_rtt,
    sample_transfer,
    udp_counts,
)
from probe.observations import Observation, Phase, Sample
from probe.results import (
    FeatureResult,
    Key,
    NetworkResult,
    PlatformResult,
    Run,
    Status,
    TargetResult,
    index_targets,
)
from probe.thresholds import DEFAULT, Thresholds

# (layer, failure fact) -> reason code. A layer's `*` row is its default.
REASONS: dict[tuple[str, str], str] = {
    ("dns", F.NXDOMAIN): "dns.nxdomain",
    ("dns", F.NO_ANSWER): "dns.nxdomain",
    ("dns", F.TIMEOUT): "dns.timeout",
    ("dns", F.REFUSED): "dns.refused",
    ("dns", F.SERVFAIL): "dns.servfail",
    ("dns", "*"): "dns.servfail",
    ("tcp", F.TIMEOUT): "tcp.timeout",
    ("tcp", F.CONNECTION_REFUSED): "tcp.reset",
    ("tcp", F.CONNECTION_RESET): "tcp.reset",
    ("tcp", F.HOST_UNREACHABLE): "tcp.unreachable",
    ("tcp", F.NETWORK_UNREACHABLE): "tcp.unreachable",
    ("tcp", F.ADDRESS_UNAVAILABLE): "tcp.unreachable",
    ("tcp", "*"): "tcp.reset",
    ("tls", F.TIMEOUT): "tls.timeout",
    ("tls", F.CONNECTION_RESET): "tls.reset",
    ("tls", F.CONNECTION_REFUSED): "tls.reset",
    ("tls", F.EOF_): "tls.eof",
    ("tls", F.UNTRUSTED_CERTIFICATE): "tls.untrusted",
    ("tls", F.HOSTNAME_MISMATCH): "tls.hostname",
    ("tls", F.TLS_ALERT): "tls.alert",
    ("tls", "*"): "tls.alert",
    ("http", F.TIMEOUT): "http.timeout",
    ("http", F.CONNECTION_RESET): "http.reset",
    ("http", F.EOF_): "http.reset",
    ("http", F.STALL): "http.stall",
    ("http", F.HTTP_STATUS): "http.status",
    ("http", "*"): "http.reset",
    ("quic", F.TIMEOUT): "quic.timeout",
    ("quic", F.PEER_CLOSED): "quic.closed",
    ("quic", F.UNTRUSTED_CERTIFICATE): "tls.untrusted",
    ("quic", F.HOSTNAME_MISMATCH): "tls.hostname",
    ("quic", F.PORT_UNREACHABLE): "udp.unreachable",
    ("quic", F.HOST_UNREACHABLE): "udp.unreachable",
    ("quic", F.NETWORK_UNREACHABLE): "udp.unreachable",
    ("quic", F.CONNECTION_REFUSED): "udp.unreachable",
    ("quic", F.ALPN_REFUSED): "quic.closed",
    ("quic", F.TLS_ALERT): "tls.alert",
    ("quic", "*"): "quic.closed",
    ("stun", F.TIMEOUT): "udp.timeout",
    ("stun", F.PORT_UNREACHABLE): "udp.unreachable",
    ("stun", F.HOST_UNREACHABLE): "udp.unreachable",
    ("stun", F.NETWORK_UNREACHABLE): "udp.unreachable",
    ("stun", F.CUTOFF): "udp.cutoff",
    ("stun", "*"): "udp.timeout",
    ("turn", F.TIMEOUT): "udp.timeout",
    ("turn", F.PORT_UNREACHABLE): "udp.unreachable",
    ("turn", F.CONNECTION_REFUSED): "tcp.reset",
    ("turn", F.CONNECTION_RESET): "tcp.reset",
    ("turn", F.EOF_): "tcp.reset",  # over TCP: closed after the Allocate, before any answer
    ("turn", F.HOST_UNREACHABLE): "udp.unreachable",
    ("turn", F.NETWORK_UNREACHABLE): "udp.unreachable",
    ("turn", F.PROTOCOL_ERROR): "turn.unexpected",  # a STUN answer, but not TURN's 401
    ("turn", "*"): "udp.timeout",
    ("deadline", "*"): "target.timeout",
}

# Failures that say the layer or the host cannot be tested here, not that anything is blocked.
UNTESTABLE = {F.NOT_IMPLEMENTED, F.ADDRESS_UNAVAILABLE, F.LOCAL_LIMIT}

STATUS_OF_REASON: dict[str, Status] = {
    "ok": "ok",
    "http.throttled": "degraded",
    "udp.loss": "degraded",
    "latency.high": "degraded",
    "partial": "degraded",
    "network.allowlist": "degraded",
    "network.down": "inconclusive",
    "network.captive": "inconclusive",
    "target.down": "inconclusive",
    "target.untestable": "inconclusive",
}

# Network verdicts under which a failing target tells nothing about censorship.
BLINDING = ("network.down", "network.captive")


def status_of(reason: str) -> Status:
    return STATUS_OF_REASON.get(reason, "blocked")


def reason_of(layer: str, failure: str | None) -> str:
    """The reason code for a layer that failed with a failure fact."""
    if failure in UNTESTABLE:
        return "target.untestable"
    failure = failure or F.UNKNOWN
    return REASONS.get((layer, failure)) or REASONS.get((layer, "*")) or f"{layer}.failed"


def _address(sample: Sample, phase: Phase) -> str | None:
    """The address a sample talked to: the phase's own, else the first dns answer."""
    address = phase.get("address")
    if address:
        return str(address)
    dns = sample.phases.get("dns")
    answers = dns.get("answers") if dns is not None else None
    return str(answers[0]) if answers else None


def _no_local_ipv6(sample: Sample, layer: str, phase: Phase, th: Thresholds) -> bool:
    """'Network unreachable' to an IPv6 address, answered by our own kernel at once: this host
    has no IPv6 route. Not blocking (CENSORSHIP.md, look-alikes)."""
    address = _address(sample, phase)
    return (phase.failure == F.NETWORK_UNREACHABLE and address is not None and ":" in address
            and phase.ms is not None and phase.ms <= th.local_failure_ms)


def sample_reason(sample: Sample, th: Thresholds = DEFAULT) -> str:
    failed = sample.failed
    if failed is None:
        return "ok"
    layer, phase = failed
    if _no_local_ipv6(sample, layer, phase, th):
        return "target.untestable"
    return reason_of(layer, phase.failure)


def describe(layer: str, phase: Phase) -> str:
    """One line of facts about a failed phase, for `detail`."""
    took = f" after {phase.ms:.0f} ms" if phase.ms is not None else ""
    what = phase.error or phase.failure or "failed"
    size = phase.get("bytes")
    if phase.failure == F.STALL and size is not None and str(size) not in what:
        what += f" ({size} bytes arrived before the stall)"
    return f"{layer}: {what}{took}"


def summary_phases(sample: Sample) -> dict[str, dict[str, object]]:
    return {layer: phase.model_dump(exclude_none=True) for layer, phase in sample.phases.items()}


# --- what is judged: a catalog job, or a saved result ----------------------------------------


@dataclass(frozen=True)
class Subject:
    """What the classifier needs to know of a target besides its observation. Built from a
    catalog Job for a live run, or from a saved TargetResult alone for `rejudge`."""

    platform: str | None
    feature: str | None
    url: str
    name: str | None = None
    domestic: bool = False
    expect: dict[str, float] = field(default_factory=dict)

    @property
    def is_control(self) -> bool:
        return self.platform is None

    @property
    def key(self) -> Key:
        return (self.platform, self.feature, self.url)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""


def expect_of(job: Job) -> dict[str, float]:
    """A target's `expect:` in result-file units (ms, bit/s, fraction); absent keys left out."""
    expect = job.target.expect
    out: dict[str, float] = {}
    if expect.max_rtt is not None:
        out["max_rtt_ms"] = float(expect.max_rtt) * 1000
    if expect.min_throughput is not None:
        out["min_throughput_bps"] = float(expect.min_throughput)
    if expect.max_loss is not None:
        out["max_loss"] = float(expect.max_loss)
    return out


def subject_of_job(job: Job) -> Subject:
    return Subject(job.platform, job.feature, job.target.url, job.target.name, job.domestic,
                   expect_of(job))


def subject_of_result(target: TargetResult) -> Subject:
    return Subject(target.platform, target.feature, target.url, target.name, target.domestic,
                   dict(target.expect or {}))


# The last few baselines' targets by key: a run of 10,000 targets looks each one up once.
_INDEXES: list[tuple[Run, int, dict[Key, TargetResult]]] = []


def _index(baseline: Run) -> dict[Key, TargetResult]:
    size = len(baseline.targets) + len(baseline.network.controls)
    for run, known, index in _INDEXES:
        if run is baseline and known == size:
            return index
    index = index_targets(baseline)
    _INDEXES[:] = [*_INDEXES[-3:], (baseline, size, index)]
    return index


def find_baseline(baseline: Run | None, subject: Subject) -> TargetResult | None:
    """The same target in the baseline run, if it is there."""
    if baseline is None:
        return None
    return _index(baseline).get(subject.key)


# --- one target ------------------------------------------------------------------------------


@dataclass
class Verdict:
    status: Status
    reason: str
    detail: str


def judge_target(job: Job, observation: Observation, baseline: Run | None = None,
                 thresholds: Thresholds = DEFAULT) -> TargetResult:
    """A target's verdict from its samples, its diagnosis and its baseline (if any)."""
    return judge_subject(subject_of_job(job), observation, baseline, thresholds)


def judge_subject(subject: Subject, observation: Observation, baseline: Run | None = None,
                  th: Thresholds = DEFAULT) -> TargetResult:
    samples = observation.samples
    base = find_baseline(baseline, subject)
    failing = [s for s in samples if not s.ok]
    reasons = [sample_reason(s, th) for s in failing]  # once: the verdict and `shown` both ask
    verdict = judge_samples(subject, observation, base, th, failing, reasons)
    shown = next((s for s, r in zip(failing, reasons) if r == verdict.reason), None)
    shown = shown or (failing[0] if failing else samples[0] if samples else None)
    return TargetResult(
        platform=subject.platform, feature=subject.feature, url=subject.url, name=subject.name,
        status=verdict.status, reason=verdict.reason, detail=verdict.detail,
        phases=summary_phases(shown) if shown is not None else {},
        samples=len(samples), ok_samples=sum(1 for s in samples if s.ok),
        domestic=subject.domestic, expect=subject.expect or None, observation=observation,
    )


def judge_samples(subject: Subject, observation: Observation, base: TargetResult | None,
                  th: Thresholds, failing: list[Sample], reasons: list[str]) -> Verdict:
    """The verdict from the samples; `failing` are those that did not work, `reasons` their
    sample_reason()s, in the same order."""
    samples = observation.samples
    if not samples:
        return Verdict("inconclusive", "target.untestable", "no sample")
    dns = classify_dns.judge(observation, base)
    if dns is not None:  # the dns phase carries its own judgement (classify_dns.py)
        verdict = Verdict(*dns)
        return _same_in_baseline(verdict, verdict.reason, base, th)
    if not failing:
        verdict = judge_quality(subject, observation, base, th)
        note = classify_dns.note(observation) if base is None else None
        if note and verdict.status == "ok":
            verdict.detail = _join(verdict.detail, note)
        return verdict
    counts = Counter(reasons)
    reason = telling_reason(counts)
    worst = failing[reasons.index(reason)]
    failed = worst.failed
    assert failed is not None
    detail = describe(*failed)
    others = ", ".join(f"{r} x{n}" for r, n in counts.items() if r != reason)
    if len(failing) < len(samples):  # some samples worked: never blocked (a short outage)
        ok = len(samples) - len(failing)
        return Verdict(
            "degraded" if reason != "target.untestable" else "inconclusive", reason,
            f"{len(failing)} of {len(samples)} samples failed ({detail}); {ok} worked"
            + (f"; other failures: {others}" if others else ""))
    if len(samples) > 1:
        detail += f"; all {len(samples)} samples failed" + (f" ({others})" if others else "")
    verdict = Verdict(status_of(reason), reason, detail)
    if reason == "target.untestable" and _no_local_ipv6(worst, *failed, th):
        verdict.detail = _join(detail, "this host has no IPv6 route: not a block")
    down = base is not None and verdict.status == "blocked" and baseline_failure(base, th) == reason
    verdict = diagnose(verdict, observation.diagnosis, base, refine=not down)
    return _same_in_baseline(verdict, reason, base, th)


def telling_reason(counts: Counter[str]) -> str:
    """The reason a target failed with, from its samples' reasons: the most common, except that
    silence at a layer (`tcp.timeout`) yields to an answer at the same layer on another attempt
    (`tcp.reset`, `tcp.unreachable`). A censor's rejects are often rate-limited (Linux sends a
    host 6 ICMP errors in a burst, then 1 a second), so its other attempts see nothing."""
    reason = counts.most_common(1)[0][0]
    layer, _, kind = reason.partition(".")
    if kind == "timeout" and layer != "target":
        for other, _ in counts.most_common():  # the most common answer first
            if other != reason and other.partition(".")[0] == layer:
                return other
    return reason


def _join(*parts: str | None) -> str:
    return "; ".join(p for p in parts if p)


def baseline_failure(target: TargetResult, th: Thresholds = DEFAULT) -> str | None:
    """The reason a baseline target failed with on every sample, before any diagnosis, or
    None when it worked (on some sample)."""
    samples = target.observation.samples
    if samples:
        if any(s.ok for s in samples):
            return None
        dns = classify_dns.judge(target.observation)
        if dns is not None and dns[0] == "blocked":
            return dns[1]
        return telling_reason(Counter(sample_reason(s, th) for s in samples))
    return target.reason if target.status == "blocked" else None


def _same_in_baseline(verdict: Verdict, raw_reason: str, base: TargetResult | None,
                      th: Thresholds) -> Verdict:
    """Failing the same way in the baseline: the endpoint is down for everyone."""
    if verdict.status != "blocked" or base is None:
        return verdict
    if baseline_failure(base, th) != raw_reason:
        return verdict
    return Verdict("inconclusive", "target.down",
                   f"fails the same way in the baseline ({raw_reason}): the endpoint is down, "
                   f"not blocked; {verdict.detail}")


# --- diagnosis steps: one rule per step, run when every sample failed ------------------------

Step = Callable[[Verdict, Phase, TargetResult | None], str | None]
SNI_SWAP_REASONS = ("tls.timeout", "tls.reset", "tls.eof", "tls.alert")


def _ms(phase: Phase) -> str:
    return f" in {phase.ms:.0f} ms" if phase.ms is not None else ""


def _sni_control(v: Verdict, step: Phase, base: TargetResult | None) -> str | None:
    if v.reason not in SNI_SWAP_REASONS:
        return None
    sni = step.get("sni") or "a harmless name"
    if step.ok and v.reason == "tls.alert" and step.get("reply") == "alert":
        return (f"SNI control: the same address with SNI {sni} got an alert too: the server "
                f"refuses both names, not a filter")
    if step.ok:
        reply = {"server_hello": "a ServerHello", "alert": "a TLS alert",
                 "handshake": "a handshake record"}.get(step.get("reply"), "an answer")
        v.status, v.reason = "blocked", "tls.sni_filtered"
        return f"SNI control: the same address with SNI {sni} got {reply}{_ms(step)}"
    return (f"SNI control: the same address with SNI {sni} failed too "
            f"({step.error or step.failure}): the address or port is blocked, or the server is down")


def _version_negotiation(v: Verdict, step: Phase, base: TargetResult | None) -> str | None:
    if v.reason != "quic.timeout":
        return None
    if step.ok:
        v.status, v.reason = "blocked", "quic.sni_filtered"
        versions = step.get("versions")
        listed = f" (versions {', '.join(map(str, versions))})" if versions else ""
        return f"version-negotiation ping without SNI answered{_ms(step)}{listed}"
    return (f"version-negotiation ping unanswered too ({step.error or step.failure}): UDP to "
            f"this address and port is dropped, or nothing listens")


def _other_addresses(v: Verdict, step: Phase, base: TargetResult | None) -> str | None:
    if v.reason != "tcp.timeout":
        return None
    tried = ", ".join(map(str, step.get("tried") or [])) or "?"
    connected = ", ".join(map(str, step.get("connected") or []))
    if step.ok:
        return (f"other addresses of the name: {connected} connected (tried {tried}): this "
                f"address is dropped, the service is up")
    return f"other addresses of the name: none connected (tried {tried})"


def _certificate(v: Verdict, step: Phase, base: TargetResult | None) -> str | None:
    if v.reason not in ("tls.untrusted", "tls.hostname"):
        return None
    if not step.ok:
        return f"reading the presented certificate failed ({step.error or step.failure})"
    text = f"the server presented a certificate issued by {step.get('issuer') or '?'}"
    if step.get("subject"):
        text += f" for {step.get('subject')}"
    was = _certificate_facts(base)
    if was and was.get("issuer"):
        text += f"; the baseline's was issued by {was['issuer']}"
    return text


def _deadline(v: Verdict, step: Phase, base: TargetResult | None) -> str | None:
    return "the diagnosis ran out of time"


# diagnosis key -> the rule that reads it (keys: the mock convention, /tmp/mockconv.md)
DIAGNOSIS: dict[str, Step] = {
    "sni_control": _sni_control,
    "version_negotiation": _version_negotiation,
    "other_addresses": _other_addresses,
    "certificate": _certificate,
    "deadline": _deadline,
}


# What a refined reason concludes, said once at the head of `detail`.
CONCLUSIONS = {
    "tls.sni_filtered": "another SNI to the same address is answered: the name is filtered, "
                        "not the address",
    "quic.sni_filtered": "QUIC without a ClientHello is answered: the handshake with this name "
                         "is filtered",
}


def diagnose(verdict: Verdict, diagnosis: dict[str, Phase], base: TargetResult | None = None,
             refine: bool = True) -> Verdict:
    """Refine a blocked verdict with the diagnosis steps; each step that applies is named.
    With `refine` False the steps are only listed (the verdict is already decided)."""
    raw = Verdict(verdict.status, verdict.reason, verdict.detail)
    steps = []
    for key, step in diagnosis.items():
        rule = DIAGNOSIS.get(key)
        text = rule(verdict, step, base) if rule is not None else None
        if text:
            steps.append(text)
    if not refine:
        verdict.status, verdict.reason = raw.status, raw.reason
    elif verdict.reason != raw.reason:
        why = CONCLUSIONS.get(verdict.reason, "")
        verdict.detail = _join(f"{raw.reason} on every sample, but {why}", verdict.detail)
    verdict.detail = _join(verdict.detail, *steps)
    return verdict


# --- quality of a target that worked: redirect, throughput, loss, RTT ------------------------


def _rate(bps: float) -> str:
    if bps >= 1e6:
        return f"{bps / 1e6:.1f} Mbit/s"
    return f"{bps / 1e3:.0f} kbit/s"


def _ok_detail(sample: Sample) -> str:
    parts = []
    for layer, p in sample.phases.items():
        if p.ms is None:
            continue
        parts.append(f"{layer} {p.ms:.0f} ms")
    return ", ".join(parts)


def _first_ok(target: TargetResult | None) -> Sample | None:
    if target is None:
        return None
    return next((s for s in target.observation.samples if s.ok), None)


def _certificate_facts(target: TargetResult | None) -> dict[str, Any] | None:
    sample = _first_ok(target)
    tls = sample.phases.get("tls") if sample is not None else None
    if tls is None or not tls.get("issuer"):
        return None
    return {"issuer": tls.get("issuer"), "spki_sha256": tls.get("spki_sha256")}


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
    http = sample.phases.get("http")
    if http is None or not http.ok:
        return None
    status, location = http.get("status"), http.get("location_host")
    if not isinstance(status, int) or not 300 <= status < 400 or not location:
        return None
    return None if site(str(location)) == site(host) else (status, str(location))


@dataclass
class Quality:
    """What the quality checks found: problems (reason, text), in priority order, and notes."""

    problems: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, reason: str, text: str) -> None:
        self.problems.append((reason, text))


def _redirect(s: Subject, obs: Observation, base: TargetResult | None, th: Thresholds,
              q: Quality) -> None:
    moved = redirect_of(obs.samples[0], s.host)
    if moved is None:
        return
    status, location = moved
    before = _first_ok(base)
    was = before.phases["http"].get("status") if before and "http" in before.phases else None
    if isinstance(was, int) and 200 <= was < 300:
        q.add("http.status", f"HTTP {status} redirect to {location}; the baseline "
              f"got HTTP {was}: a block page")
    else:
        q.notes.append(f"HTTP {status} redirect to {location}")


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): how likely k or more losses are by chance."""
    if k <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    return min(1.0, sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)))


def _loss(s: Subject, obs: Observation, base: TargetResult | None, th: Thresholds,
          q: Quality) -> None:
    sent, lost = udp_counts(obs.samples)
    if not sent:
        return
    allowed: list[tuple[float, str]] = []
    if base is not None:
        bsent, blost = udp_counts(base.observation.samples)
        if bsent:
            allowed.append((max(blost / bsent, th.max_loss),
                            f"the baseline lost {blost} of {bsent}"))
    if "max_loss" in s.expect:
        allowed.append((s.expect["max_loss"], "expect.max_loss"))
    if not allowed:
        allowed.append((th.max_loss, "built-in allowance"))
    what = f"{lost} of {sent} requests unanswered ({lost / sent:.0%})"
    for p, label in allowed:
        chance = binomial_tail(lost, sent, p)
        if lost / sent > p and chance < th.loss_alpha:
            q.add("udp.loss", f"{what}; allowed {p:.0%} ({label}); "
                  f"{chance:.2g} likely by chance")
            return
    if lost:
        p, label = allowed[0]
        q.notes.append(f"{what}: within chance of {p:.0%} loss ({label})")


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


def _rtt_rose(now: float | None, before: float | None, th: Thresholds) -> bool:
    return (now is not None and before is not None and now > before * th.rtt_ratio
            and now - before > th.rtt_margin_ms)


def _throughput(s: Subject, obs: Observation, base: TargetResult | None, th: Thresholds,
                q: Quality) -> None:
    measured = [(smp, t) for smp in obs.samples
                if (t := sample_transfer(smp)) is not None and _measurable(smp, t, th)]
    if not measured:
        return
    rate = median(t.rate_bps for _, t in measured)
    assert rate is not None
    before = _baseline_rate(base, th)
    why = []
    if before is not None and rate < before * th.throttle_ratio:
        why.append(f"{before / rate:.0f}x below the baseline's {_rate(before)}")
    if "min_throughput_bps" in s.expect and rate < s.expect["min_throughput_bps"]:
        why.append(f"below expect.min_throughput {_rate(s.expect['min_throughput_bps'])}")
    if before is None and "min_throughput_bps" not in s.expect and rate < th.min_throughput_bps:
        why.append(f"below the built-in floor {_rate(th.min_throughput_bps)}")
    if not why:
        return
    took = median(t.transfer_ms for _, t in measured) or 0.0
    size = median(t.bytes for _, t in measured) or 0
    text = (f"throughput {_rate(rate)} ({size:.0f} bytes in {took:.0f} ms, "
            f"{len(measured)} sample{'s' if len(measured) > 1 else ''}), " + "; ".join(why))
    now_rtt = observation_metrics(obs).rtt_ms
    was_rtt = observation_metrics(base.observation).rtt_ms if base is not None else None
    if now_rtt is not None and was_rtt is not None:
        if _rtt_rose(now_rtt, was_rtt, th):
            text += (f"; RTT rose from {was_rtt:.0f} to {now_rtt:.0f} ms: a shaper queueing "
                     f"packets")
        else:
            text += (f"; RTT not raised ({now_rtt:.0f} ms, baseline {was_rtt:.0f} ms): a "
                     f"policer dropping packets")
    elif now_rtt is not None:
        text += f"; RTT {now_rtt:.0f} ms (no baseline RTT to tell a policer from a shaper)"
    q.add("http.throttled", text)


def _latency(s: Subject, obs: Observation, base: TargetResult | None, th: Thresholds,
             q: Quality) -> None:
    rtt = observation_metrics(obs).rtt_ms
    if rtt is None:
        return
    before = observation_metrics(base.observation).rtt_ms if base is not None else None
    if _rtt_rose(rtt, before, th):
        assert before is not None
        q.add("latency.high", f"RTT median {rtt:.0f} ms, {rtt / before:.1f}x the "
              f"baseline's {before:.0f} ms")
    elif "max_rtt_ms" in s.expect and rtt > s.expect["max_rtt_ms"]:
        q.add("latency.high", f"RTT median {rtt:.0f} ms, above expect.max_rtt "
              f"{s.expect['max_rtt_ms']:.0f} ms")
    elif before is None and "max_rtt_ms" not in s.expect and rtt > th.max_rtt_ms:
        q.add("latency.high", f"RTT median {rtt:.0f} ms, above the built-in "
              f"ceiling {th.max_rtt_ms:.0f} ms")


def _certificate_change(s: Subject, obs: Observation, base: TargetResult | None,
                        th: Thresholds, q: Quality) -> None:
    tls = obs.samples[0].phases.get("tls")
    was = _certificate_facts(base)
    if tls is None or was is None or not tls.get("issuer"):
        return
    if tls.get("issuer") == was["issuer"] and tls.get("spki_sha256") == was["spki_sha256"]:
        return
    changed = ("issuer" if tls.get("issuer") != was["issuer"] else "key")
    q.notes.append(f"certificate {changed} changed since the baseline (issuer "
                   f"{tls.get('issuer')}, was {was['issuer']}); trusted, so not interception "
                   f"(platforms rotate CAs)")


Check = Callable[[Subject, Observation, "TargetResult | None", Thresholds, Quality], None]

# The checks, in the order their problems rank: the first problem names the verdict.
QUALITY: tuple[Check, ...] = (_redirect, _throughput, _loss, _latency, _certificate_change)


def judge_quality(subject: Subject, observation: Observation, base: TargetResult | None,
                  th: Thresholds = DEFAULT) -> Verdict:
    """The verdict of a target whose every sample worked: ok, or what the checks found."""
    q = Quality()
    for check in QUALITY:
        check(subject, observation, base, th, q)
    facts = _ok_detail(observation.samples[0])
    if not q.problems:
        return Verdict("ok", "ok", _join(facts, *q.notes))
    reason, text = q.problems[0]
    rest = [t for _, t in q.problems[1:]]
    return Verdict(status_of(reason), reason, _join(text, *rest, *q.notes, facts))


# --- the network: controls --------------------------------------------------------------------

CERTIFICATE_FAILURES = (F.UNTRUSTED_CERTIFICATE, F.HOSTNAME_MISMATCH)


def portal_signs(target: TargetResult) -> list[str]:
    """Signs of a captive portal in one control's samples: certificate errors, redirects to
    another site."""
    host = urlsplit(target.url).hostname or ""
    signs: list[str] = []
    for sample in target.observation.samples:
        failed = sample.failed
        if failed is not None and failed[1].failure in CERTIFICATE_FAILURES:
            signs.append(f"{target.url}: {failed[1].error or failed[1].failure}")
        moved = redirect_of(sample, host)
        if moved is not None:
            signs.append(f"{target.url} redirects to {moved[1]}")
    return list(dict.fromkeys(signs))


def one_address(controls: Iterable[TargetResult]) -> str | None:
    """The single address every name resolved to, when at least two names did (a portal's
    DNS answering everything with itself); None otherwise."""
    answers: dict[str, set[str]] = {}
    for c in controls:
        for sample in c.observation.samples:
            dns = sample.phases.get("dns")
            if dns is None or dns.get("literal") or not dns.get("answers"):
                continue
            answers.setdefault(str(dns.get("name") or c.url), set()).update(
                map(str, dns.get("answers")))
    everything = set().union(*answers.values()) if answers else set()
    return next(iter(everything)) if len(answers) >= 2 and len(everything) == 1 else None


def judge_network(controls: Sequence[TargetResult],
                  thresholds: Thresholds = DEFAULT) -> NetworkResult:
    """Down when every control failed; captive when a portal answers; an allowlist when only
    domestic controls work. Controls that cannot be tested here count neither way."""
    def result(status: Status, reason: str, detail: str) -> NetworkResult:
        return NetworkResult(status=status, reason=reason, detail=detail, controls=list(controls))

    if not controls:
        return result("ok", "ok", "no controls")
    counted = [c for c in controls if c.status != "inconclusive"]
    skipped = len(controls) - len(counted)
    skip = f"; {skipped} not testable here" if skipped else ""
    working = [c for c in counted if c.status in ("ok", "degraded")]
    signs = [s for c in controls for s in portal_signs(c)]
    clean = [c for c in working if not portal_signs(c)]
    single = one_address(controls)
    if not clean and (signs or (single and counted)):
        evidence = signs + ([f"every name resolves to {single}"] if single else [])
        return result("inconclusive", "network.captive",
                      "a captive portal answers: " + "; ".join(evidence[:4])
                      + "; log in to the network and run again")
    if not counted:
        return result("ok", "ok", f"no control could be tested here ({len(controls)} skipped)")
    if not working:
        reasons = Counter(c.reason for c in counted)
        listed = ", ".join(f"{r} x{n}" if n > 1 else r for r, n in reasons.items())
        return result("inconclusive", "network.down",
                      f"all {len(counted)} controls failed ({listed}){skip}")
    foreign = [c for c in counted if not c.domestic]
    if foreign and not any(not c.domestic for c in working):
        return result("degraded", "network.allowlist",
                      f"all {len(foreign)} foreign controls failed while {len(working)} "
                      f"domestic ones work: only domestic destinations are reachable (an "
                      f"allowlist); failing targets are blocked, not down{skip}")
    return result("ok", "ok", f"{len(working)} of {len(counted)} controls reachable{skip}")


def apply_network(network: NetworkResult, targets: Iterable[TargetResult]) -> None:
    """No network, or a captive portal: no failing target can be blamed on a censor."""
    if network.reason not in BLINDING:
        return
    for t in targets:
        captive_ok = network.reason == "network.captive" and bool(portal_signs(t))
        if t.status != "ok" or captive_ok:
            t.detail = f"{t.reason}: {t.detail}" if t.detail else t.reason
            t.status, t.reason = "inconclusive", network.reason


# --- features and platforms ---------------------------------------------------------------


def _commonest(reasons: Iterable[str]) -> str:
    return Counter(reasons).most_common(1)[0][0]


def combine(statuses: Sequence[tuple[Status, str]], need: str = "all") -> tuple[Status, str]:
    """Fold targets' (status, reason) into a feature's, or features' into a platform's.

    Inconclusive members say nothing either way and are left out, unless all are. `need: any`
    (clients fail over): one working member is enough."""
    if not statuses:
        return "inconclusive", "target.untestable"
    judged = [(s, r) for s, r in statuses if s != "inconclusive"]
    if not judged:
        return "inconclusive", _commonest(r for _, r in statuses)
    kinds = {s for s, _ in judged}
    if kinds == {"ok"} or (need == "any" and "ok" in kinds):
        return "ok", "ok"
    if kinds == {"blocked"}:
        return "blocked", _commonest(r for _, r in judged)
    if need == "any" and "degraded" in kinds:  # the best member is degraded
        return "degraded", _commonest(r for s, r in judged if s == "degraded")
    if "blocked" not in kinds:  # ok and degraded: say what degrades it
        return "degraded", _commonest(r for s, r in judged if s == "degraded")
    return "degraded", "partial"


def _tally(members: Sequence[TargetResult | FeatureResult], noun: str) -> str:
    """'1 of 3 targets ok; 2 not: tcp.timeout x2'."""
    ok = sum(1 for m in members if m.status == "ok")
    failed = Counter(m.reason for m in members if m.status != "ok")
    text = f"{ok} of {len(members)} {noun} ok"
    if failed:
        text += f"; {sum(failed.values())} not: " + ", ".join(
            f"{r} x{n}" if n > 1 else r for r, n in failed.items())
    return text


def judge_features(
    targets: Sequence[TargetResult], needs: dict[tuple[str, str], str]
) -> list[FeatureResult]:
    grouped: dict[tuple[str, str], list[TargetResult]] = {}
    for t in targets:
        if t.platform is not None and t.feature is not None:
            grouped.setdefault((t.platform, t.feature), []).append(t)
    out = []
    for (platform, feature), members in grouped.items():
        need = needs.get((platform, feature), "all")
        status, reason = combine([(m.status, m.reason) for m in members], need)
        detail = f"{_tally(members, 'targets')}; need {need}"
        if need == "any" and status == "ok" and any(m.status != "ok" for m in members):
            detail += ": clients fail over to the working ones"
        out.append(FeatureResult(platform=platform, feature=feature, status=status,
                                 reason=reason, detail=detail, need=need))
    return out


def feature_verdict(f: FeatureResult) -> str:
    return f.status if f.status == "ok" else f"{f.status} ({f.reason})"


def judge_platforms(
    features: Sequence[FeatureResult], names: dict[str, str | None]
) -> list[PlatformResult]:
    grouped: dict[str, list[FeatureResult]] = {}
    for f in features:
        grouped.setdefault(f.platform, []).append(f)
    out = []
    for platform, members in grouped.items():
        status, reason = combine([(m.status, m.reason) for m in members])
        out.append(PlatformResult(
            platform=platform, name=names.get(platform), status=status, reason=reason,
            detail=_tally(members, "features"),
            features={m.feature: feature_verdict(m) for m in members},
        ))
    return out


Judged = tuple[NetworkResult, list[TargetResult], list[FeatureResult], list[PlatformResult]]


def judge_groups(network: NetworkResult, targets: list[TargetResult],
                 needs: dict[tuple[str, str], str], names: dict[str, str | None]) -> Judged:
    apply_network(network, targets)
    features = judge_features(targets, needs)
    return network, targets, features, judge_platforms(features, names)


def judge_run(
    jobs_and_observations: Sequence[tuple[Job, Observation]],
    needs: dict[tuple[str, str], str],
    names: dict[str, str | None],
    baseline: Run | None = None,
    thresholds: Thresholds = DEFAULT,
) -> Judged:
    """Judge a whole run: controls, then targets in the light of the network, then groups."""
    controls = [judge_target(j, o, baseline, thresholds)
                for j, o in jobs_and_observations if j.is_control]
    targets = [judge_target(j, o, baseline, thresholds)
               for j, o in jobs_and_observations if not j.is_control]
    return judge_groups(judge_network(controls, thresholds), targets, needs, names)


def rejudge(saved: Run, baseline: Run | None, baseline_path: str | None = None,
            thresholds: Thresholds = DEFAULT) -> Run:
    """A saved run judged again against another baseline, from its saved facts alone: the
    verdicts a live run with that baseline would have given."""
    def again(t: TargetResult) -> TargetResult:
        return judge_subject(subject_of_result(t), t.observation, baseline, thresholds)

    controls = [again(c) for c in saved.network.controls]
    targets = [again(t) for t in saved.targets]
    needs = {(f.platform, f.feature): f.need for f in saved.features}
    names = {p.platform: p.name for p in saved.platforms}
    network, targets, features, platforms = judge_groups(
        judge_network(controls, thresholds), targets, needs, names)
    return saved.model_copy(update={
        "baseline": baseline_path, "network": network, "targets": targets,
        "features": features, "platforms": platforms,
    })
