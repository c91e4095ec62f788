"""One target's verdict from its samples, its diagnosis steps and its baseline.

Strategy:
1. A sample's first failing layer and its failure fact give a reason code (reasons.py).
2. The dns phase carries its own judgement (dns.py): it comes first.
3. Some samples failing, others working: `degraded`, with the count; never `blocked`. Every
   sample failing: `blocked` with the telling reason, refined by the diagnosis steps
   (diagnosis.py), each step named in `detail`. Failing the same way in the baseline:
   `inconclusive target.down`.
4. Every sample working: the quality checks (quality.py) against the baseline, `expect`, then
   the built-in thresholds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from probe.classify import diagnosis, dns, udp
from probe.classify.quality import judge_quality
from probe.classify.reasons import describe, no_local_ipv6, sample_reason, status_of
from probe.classify.verdict import Baseline, Subject, Verdict, join
from probe.observations import DnsFallback, ExchangeFacts, Observation
from probe.results import TargetResult
from probe.thresholds import DEFAULT, Thresholds


def judge_subject(subject: Subject, observation: Observation, baseline: Baseline | None = None,
                  th: Thresholds = DEFAULT) -> TargetResult:
    """A target's result: its verdict, a summary of the sample the verdict rests on, and every
    sample whole (so it can be judged again later)."""
    samples = observation.samples
    base = baseline.find(subject.key) if baseline is not None else None
    reasons = [sample_reason(s, th) for s in samples]  # once: the verdict and `shown` both ask
    verdict = judge_samples(subject, observation, base, th, reasons)
    failing = [(s, r) for s, r in zip(samples, reasons, strict=True) if not s.ok]
    shown = next((s for s, r in failing if r == verdict.reason), None)
    shown = shown or (failing[0][0] if failing else samples[0] if samples else None)
    return TargetResult(
        platform=subject.platform, feature=subject.feature, url=subject.url, name=subject.name,
        status=verdict.status, reason=verdict.reason, detail=verdict.detail,
        phases={k: f.summary() for k, f in shown.phases.items()} if shown is not None else {},
        samples=len(samples), ok_samples=sum(1 for s in samples if s.ok),
        domestic=subject.domestic, expect=subject.expect or None, observation=observation,
    )


def judge_samples(subject: Subject, observation: Observation, base: TargetResult | None,
                  th: Thresholds, reasons: list[str]) -> Verdict:
    """The verdict from the samples; `reasons` are their sample_reason()s, in order."""
    samples = observation.samples
    if not samples:
        if observation.interrupted:
            return Verdict("inconclusive", "target.interrupted", "not measured (interrupted)")
        return Verdict("inconclusive", "target.untestable", "no sample")
    checked = dns.judge(observation, base)
    if checked is not None:  # the dns phase carries its own judgement (dns.py)
        checked = dns.with_fallback(checked, observation.step(DnsFallback))
        return same_in_baseline(checked, checked.reason, base, th)
    failing = [(s, r) for s, r in zip(samples, reasons, strict=True) if not s.ok]
    if not failing:
        verdict = judge_quality(subject, observation, base, th)
        remark = dns.note(observation) if base is None else None
        if remark and verdict.status == "ok":
            return replace(verdict, detail=join(verdict.detail, remark))
        return verdict
    failed_reasons = [r for _, r in failing]
    counts = Counter(failed_reasons)
    reason = telling_reason(counts)
    worst = next(s for s, r in failing if r == reason)
    failed = worst.failed
    assert failed is not None
    detail = describe(*failed)
    if reason == "udp.cutoff" and isinstance(failed[1], ExchangeFacts):
        detail = join(udp.cutoff_words(failed[1]), detail)
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
    if reason == "target.untestable" and no_local_ipv6(worst, failed[1], th):
        verdict = replace(verdict, detail=join(detail, "this host has no IPv6 route: not a block"))
    down = base is not None and verdict.status == "blocked" and baseline_failure(base, th) == reason
    found = diagnosis.findings(verdict, observation, failed_reasons, base)
    verdict = diagnosis.refine(verdict, found, failed_reasons, refine=not down)
    return same_in_baseline(verdict, reason, base, th)


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


def baseline_failure(target: TargetResult, th: Thresholds = DEFAULT) -> str | None:
    """The reason a baseline target failed with on every sample, before any diagnosis, or
    None when it worked (on some sample)."""
    samples = target.observation.samples
    if samples:
        if any(s.ok for s in samples):
            return None
        checked = dns.judge(target.observation)
        if checked is not None and checked.status == "blocked":
            return checked.reason
        return telling_reason(Counter(sample_reason(s, th) for s in samples))
    return target.reason if target.status == "blocked" else None


def same_in_baseline(verdict: Verdict, raw_reason: str, base: TargetResult | None,
                     th: Thresholds) -> Verdict:
    """Failing the same way in the baseline: the endpoint is down for everyone."""
    if verdict.status != "blocked" or base is None:
        return verdict
    if baseline_failure(base, th) != raw_reason:
        return verdict
    return Verdict("inconclusive", "target.down",
                   f"fails the same way in the baseline ({raw_reason}): the endpoint is down, "
                   f"not blocked; {verdict.detail}")
