"""Features and platforms: their members' verdicts folded into one, with a tally.

A feature is ok when all its targets are (`need: all`, the default) or when any one is
(`need: any`: clients fail over between redundant endpoints). Inconclusive members say nothing
either way and are left out, unless all are. A platform folds its features with `need: all`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from probe.classify import calls
from probe.results import FeatureResult, PlatformResult, Status, TargetResult


def _commonest(reasons: Iterable[str]) -> str:
    return Counter(reasons).most_common(1)[0][0]


def combine(statuses: Sequence[tuple[Status, str]], need: str = "all") -> tuple[Status, str]:
    """Fold targets' (status, reason) into a feature's, or features' into a platform's.

    A member not measured (the run was interrupted) leaves a `need: all` group inconclusive
    unless something is blocked already: an interrupted run is not an ok one."""
    if not statuses:
        return "inconclusive", "target.untestable"
    kinds_all = {s for s, _ in statuses}
    interrupted = any(r == "target.interrupted" for _, r in statuses)
    if interrupted and need == "all" and "blocked" not in kinds_all:
        # not measured whole: what was measured cannot vouch for the rest
        return "inconclusive", "target.interrupted"
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


def tally(members: Sequence[TargetResult | FeatureResult], noun: str) -> str:
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
        detail = f"{tally(members, 'targets')}; need {need}"
        if need == "any" and status == "ok" and any(m.status != "ok" for m in members):
            detail += ": clients fail over to the working ones"
        words = calls.feature_words(reason, members) if status != "ok" else ""
        out.append(FeatureResult(platform=platform, feature=feature, status=status,
                                 reason=reason, detail=detail, need=need, words=words))
    return out


def feature_verdict(f: FeatureResult) -> str:
    """'ok', 'blocked (udp.cutoff)', or with words: 'blocked (udp.cutoff): calls connect, then
    go silent after about 25 packets'."""
    if f.status == "ok":
        return f.status
    return f"{f.status} ({f.reason})" + (f": {f.words}" if f.words else "")


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
            detail=tally(members, "features"),
            features={m.feature: feature_verdict(m) for m in members},
        ))
    return out
