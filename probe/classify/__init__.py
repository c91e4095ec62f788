"""Verdicts from observations: pure functions, no I/O, tested with tables.

The package, split along the layers (a new protocol is a layer file, a facts model in
`observations.py` and a file here):

    reasons.py    the one (layer, failure fact) -> reason code table, and each code's status
    verdict.py    the shared values: Subject, Baseline, Verdict, Finding (all frozen)
    target.py     one target: samples -> verdict (dns first, then failures, then quality)
    dns.py        what a resolver's answers mean (bogon, mismatch, injection, nxdomain)
    diagnosis.py  the steps taken after every sample failed, folded into the verdict
    tls.py        the SNI swap, the residual (penalty-box) block, the presented certificate
    quic.py       QUIC filtered by name vs QUIC dropped
    udp.py        loss of STUN/TURN exchanges against chance, a call's quality, a cut-off
    calls.py      why a call fails: the run's STUN, QUIC, DNS and TCP results read together
    emodel.py     how a call would sound: the ITU-T G.107 E-model (R, MOS)
    quality.py    redirect, throughput, loss, RTT of targets that worked
    network.py    the controls: down, captive, allowlist; what that means for the targets
    groups.py     features and platforms

Pure: every function returns new values and changes none it is given; a baseline is indexed
once by the caller (`Baseline.of`). A saved run holds every fact this needs, so `rejudge` gives
a saved run exactly the verdicts a live run with that baseline would get.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from probe.classify import calls, quality
from probe.classify.groups import combine, feature_verdict, judge_features, judge_platforms
from probe.classify.network import apply_network, judge_network, portal_signs
from probe.classify.reasons import REASONS, reason_of, sample_reason, status_of
from probe.classify.target import baseline_failure, judge_subject, telling_reason
from probe.classify.verdict import Baseline, Finding, Subject, Verdict
from probe.observations import Observation
from probe.results import FeatureResult, NetworkResult, PlatformResult, Run, TargetResult
from probe.thresholds import DEFAULT, Thresholds

if TYPE_CHECKING:
    from probe.catalog import Job

__all__ = [
    "REASONS", "Baseline", "Finding", "Judged", "Subject", "Verdict", "apply_network",
    "baseline_failure", "combine", "expect_of", "feature_verdict", "judge_features",
    "judge_groups", "judge_network", "judge_platforms", "judge_run", "judge_subject",
    "judge_target", "portal_signs", "reason_of", "rejudge", "sample_reason", "settled",
    "status_of", "subject_of_job", "subject_of_result", "telling_reason",
]

Judged = tuple[NetworkResult, list[TargetResult], list[FeatureResult], list[PlatformResult]]


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


def judge_target(job: Job, observation: Observation, baseline: Baseline | None = None,
                 thresholds: Thresholds = DEFAULT) -> TargetResult:
    """A target's verdict from its samples, its diagnosis and its baseline (if any)."""
    return judge_subject(subject_of_job(job), observation, baseline, thresholds)


def settled(job: Job, observation: Observation, baseline: Baseline | None = None,
            thresholds: Thresholds = DEFAULT) -> bool:
    """The samples so far settle the target's verdict, so further ones need not be taken: an
    https transfer far below its floor is throttled whatever they would show."""
    if job.endpoint.scheme != "https" or not observation.samples[-1].ok:
        return False
    subject = subject_of_job(job)
    base = baseline.find(subject.key) if baseline is not None else None
    return quality.throttle_settled(subject, observation, base, thresholds)


def judge_groups(network: NetworkResult, targets: Sequence[TargetResult],
                 needs: dict[tuple[str, str], str], names: dict[str, str | None],
                 reflector: Sequence[TargetResult] = ()) -> Judged:
    """Calls diagnosed from the whole run (and the reflector's flows), targets in the light of
    the network, then features and platforms (new results)."""
    judged = apply_network(network, calls.diagnose(network.controls, targets, reflector))
    features = judge_features(judged, needs)
    return network, judged, features, judge_platforms(features, names)


def judge_run(
    jobs_and_observations: Sequence[tuple[Job, Observation]],
    needs: dict[tuple[str, str], str],
    names: dict[str, str | None],
    baseline: Baseline | None = None,
    thresholds: Thresholds = DEFAULT,
) -> Judged:
    """Judge a whole run: controls, then targets in the light of the network, then groups."""
    controls = [judge_target(j, o, baseline, thresholds)
                for j, o in jobs_and_observations if j.is_control]
    targets = [judge_target(j, o, baseline, thresholds)
               for j, o in jobs_and_observations if j.platform is not None]
    return judge_groups(judge_network(controls), targets, needs, names)


def rejudge(saved: Run, baseline: Run | None, baseline_path: str | None = None,
            thresholds: Thresholds = DEFAULT) -> Run:
    """A saved run judged again against another baseline, from its saved facts alone: the
    verdicts a live run with that baseline would have given."""
    indexed = Baseline.of(baseline, baseline_path)

    def again(t: TargetResult) -> TargetResult:
        return judge_subject(subject_of_result(t), t.observation, indexed, thresholds)

    controls = [again(c) for c in saved.network.controls]
    targets = [again(t) for t in saved.targets]
    reflector = [again(t) for t in saved.reflector]
    needs = {(f.platform, f.feature): f.need for f in saved.features}
    names = {p.platform: p.name for p in saved.platforms}
    network, judged, features, platforms = judge_groups(
        judge_network(controls), targets, needs, names, reflector)
    return saved.model_copy(update={
        "baseline": baseline_path, "network": network, "targets": judged,
        "features": features, "platforms": platforms, "reflector": reflector,
    })
