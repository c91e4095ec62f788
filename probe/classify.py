"""Verdicts from observations: pure functions, no I/O, tested with tables.

Strategy: a sample's first failing layer and its failure fact give a reason code through one
table (REASONS). A target's samples are then weighed together: all failing -> blocked with the
commonest reason; some failing -> degraded with a note. Controls judged the same way decide
whether the network itself is up; if every control fails, nothing else can be concluded.
Features and platforms are judged from their targets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from probe import classify_dns
from probe import failures as F
from probe.catalog import Job
from probe.observations import Observation, Phase, Sample
from probe.results import (
    FeatureResult,
    NetworkResult,
    PlatformResult,
    Run,
    Status,
    TargetResult,
)

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
    "network.down": "inconclusive",
    "network.captive": "inconclusive",
    "target.down": "inconclusive",
    "target.untestable": "inconclusive",
}


def status_of(reason: str) -> Status:
    return STATUS_OF_REASON.get(reason, "blocked")


def reason_of(layer: str, failure: str | None) -> str:
    """The reason code for a layer that failed with a failure fact."""
    if failure in UNTESTABLE:
        return "target.untestable"
    failure = failure or F.UNKNOWN
    return REASONS.get((layer, failure)) or REASONS.get((layer, "*")) or f"{layer}.failed"


def sample_reason(sample: Sample) -> str:
    failed = sample.failed
    return "ok" if failed is None else reason_of(*_layer_failure(failed))


def _layer_failure(failed: tuple[str, Phase]) -> tuple[str, str | None]:
    layer, phase = failed
    return layer, phase.failure


def describe(layer: str, phase: Phase) -> str:
    """One line of facts about a failed phase, for `detail`."""
    took = f" after {phase.ms:.0f} ms" if phase.ms is not None else ""
    what = phase.error or phase.failure or "failed"
    return f"{layer}: {what}{took}"


def summary_phases(sample: Sample) -> dict[str, dict[str, object]]:
    return {layer: phase.model_dump(exclude_none=True) for layer, phase in sample.phases.items()}


@dataclass(frozen=True)
class TargetKey:
    platform: str | None
    feature: str | None
    url: str


def judge_target(job: Job, observation: Observation, baseline: Run | None = None) -> TargetResult:
    """A target's verdict from its own samples (and, later, its baseline)."""
    samples = observation.samples
    ok_samples = sum(1 for s in samples if s.ok)
    result = TargetResult(
        platform=job.platform,
        feature=job.feature,
        url=job.target.url,
        name=job.target.name,
        status="ok",
        reason="ok",
        samples=len(samples),
        ok_samples=ok_samples,
        domestic=job.domestic,
        observation=observation,
    )
    if not samples:
        result.status, result.reason, result.detail = "inconclusive", "target.untestable", "no sample"
        return result
    dns_verdict = classify_dns.judge(observation, classify_dns.find_target(baseline, job))
    if dns_verdict is not None:  # the dns phase carries its own judgement (classify_dns.py)
        result.status, result.reason, result.detail = dns_verdict
        result.phases = summary_phases(samples[0])
        return result
    failing = [s for s in samples if not s.ok]
    if not failing:
        result.phases = summary_phases(samples[0])
        result.detail = _ok_detail(samples[0])
        return result
    reasons = Counter(sample_reason(s) for s in failing)
    reason, _ = reasons.most_common(1)[0]
    worst = next(s for s in failing if sample_reason(s) == reason)
    result.phases = summary_phases(worst)
    failed = worst.failed
    assert failed is not None
    detail = describe(*failed)
    if ok_samples:
        result.status, result.reason = "degraded", reason
        result.detail = f"{len(failing)} of {len(samples)} samples failed ({detail})"
    else:
        result.reason = reason
        result.status = status_of(reason)
        result.detail = detail + (f"; {len(samples)} samples" if len(samples) > 1 else "")
    return result


def _ok_detail(sample: Sample) -> str:
    parts = [f"{layer} {p.ms:.0f} ms" for layer, p in sample.phases.items() if p.ms is not None]
    return ", ".join(parts)


def judge_network(controls: Sequence[TargetResult]) -> NetworkResult:
    """The network is down when every control failed; with no controls it is assumed up."""
    if not controls:
        return NetworkResult(status="ok", reason="ok", detail="no controls", controls=[])
    working = [c for c in controls if c.status in ("ok", "degraded")]
    if working:
        return NetworkResult(status="ok", reason="ok", controls=list(controls),
                             detail=f"{len(working)} of {len(controls)} controls reachable")
    return NetworkResult(status="inconclusive", reason="network.down", controls=list(controls),
                         detail=f"all {len(controls)} controls failed")


def apply_network(network: NetworkResult, targets: Iterable[TargetResult]) -> None:
    """Every control failing means no target's failure can be blamed on a censor."""
    if network.reason != "network.down":
        return
    for t in targets:
        if t.status != "ok":
            t.detail = f"{t.reason}: {t.detail}" if t.detail else t.reason
            t.status, t.reason = "inconclusive", "network.down"


def combine(statuses: list[tuple[Status, str]], need: str = "all") -> tuple[Status, str]:
    """Fold targets' (status, reason) into a feature's, or features' into a platform's."""
    if not statuses:
        return "inconclusive", "target.untestable"
    kinds = {s for s, _ in statuses}
    if kinds == {"ok"}:
        return "ok", "ok"
    if need == "any" and "ok" in kinds:
        return "ok", "ok"
    if kinds <= {"blocked"}:
        reasons = Counter(r for _, r in statuses)
        return "blocked", reasons.most_common(1)[0][0]
    if kinds <= {"inconclusive"}:
        return "inconclusive", Counter(r for _, r in statuses).most_common(1)[0][0]
    if kinds <= {"blocked", "inconclusive"}:
        reasons = Counter(r for s, r in statuses if s == "blocked")
        return "blocked", reasons.most_common(1)[0][0]
    if kinds <= {"ok", "degraded", "inconclusive"} and "degraded" in kinds and len(
        {r for s, r in statuses if s == "degraded"}
    ) == 1 and "ok" not in kinds:
        return "degraded", next(r for s, r in statuses if s == "degraded")
    return "degraded", "partial"


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
        ok = sum(1 for m in members if m.status == "ok")
        out.append(FeatureResult(platform=platform, feature=feature, status=status, reason=reason,
                                 detail=f"{ok} of {len(members)} targets ok (need {need})"))
    return out


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
            features={m.feature: m.status if m.status == "ok" else f"{m.status} ({m.reason})"
                      for m in members},
        ))
    return out


def judge_run(
    jobs_and_observations: Sequence[tuple[Job, Observation]],
    needs: dict[tuple[str, str], str],
    names: dict[str, str | None],
    baseline: Run | None = None,
) -> tuple[NetworkResult, list[TargetResult], list[FeatureResult], list[PlatformResult]]:
    """Judge a whole run: controls, then targets in the light of the network, then groups."""
    controls = [judge_target(j, o, baseline) for j, o in jobs_and_observations if j.is_control]
    targets = [judge_target(j, o, baseline) for j, o in jobs_and_observations
               if not j.is_control]
    network = judge_network(controls)
    apply_network(network, targets)
    features = judge_features(targets, needs)
    for f in features:
        f.need = needs.get((f.platform, f.feature), "all")
    return network, targets, features, judge_platforms(features, names)
