"""Runs saved by an earlier version re-judge to exactly the verdicts they hold.

tests/data/runs/ holds result files written and judged by main before the typed facts and the
classify package (commit 7a632a5): the demo's baseline and censored runs, and one target per
row of CENSORSHIP.md's tables with its baseline. Reading them types every layer's facts by its
key; judging them again must give every target the status and reason it was saved with.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from probe import classify
from probe.observations import FACTS, STEPS, Facts
from probe.results import Run, read_run

RUNS = Path(__file__).resolve().parents[1] / "data" / "runs"
PAIRS = [("demo-censored", "demo-baseline"), ("demo-baseline", None),
         ("table-censored", "table-baseline"), ("table-baseline", None)]


def verdicts(run: Run) -> list[tuple[str | None, str | None, str, str, str]]:
    return [(t.platform, t.feature, t.url, t.status, t.reason)
            for t in [*run.network.controls, *run.targets]]


@pytest.mark.parametrize(("saved", "baseline"), PAIRS)
def test_saved_runs_rejudge_to_the_verdicts_they_hold(saved: str, baseline: str | None) -> None:
    run = read_run(RUNS / f"{saved}.json")
    base = read_run(RUNS / f"{baseline}.json") if baseline else None
    again = classify.rejudge(run, base)
    assert verdicts(again) == verdicts(run)
    assert [(f.feature, f.status, f.reason) for f in again.features] == [
        (f.feature, f.status, f.reason) for f in run.features]


@pytest.mark.parametrize("saved", sorted({p for pair in PAIRS for p in pair if p}))
def test_saved_facts_are_typed_and_written_back_the_same(saved: str) -> None:
    """Every saved layer and step reads as its own model with no undeclared key, and the run
    written back holds the same JSON values."""
    path = RUNS / f"{saved}.json"
    run = read_run(path)
    for target in [*run.network.controls, *run.targets]:
        for sample in target.observation.samples:
            for key, facts in sample.phases.items():
                assert type(facts) is FACTS[key], key
                assert not facts.model_extra, (key, facts.model_extra)
        for key, step in target.observation.diagnosis.items():
            assert type(step) is STEPS[key] and not step.model_extra, key
    written = json.loads(run.to_json())
    saved_json = json.loads(path.read_text(encoding="utf-8"))
    assert _without_nulls(written) == _without_nulls(saved_json)


def _without_nulls(value: object) -> object:
    """A layer's fact without a value is left out now where older files wrote null or []."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items()
                if (k in _SHARED or v not in (None, [])) and not (k == "words" and v == "")}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


# `words` (features) is new in this version: empty, it is left out of the comparison
_SHARED = {"ok", "ms", "failure", "error", "name", "baseline", "platform", "feature", "expect"}


def test_unknown_keys_are_kept_and_written_back() -> None:
    facts = Facts.model_validate({"ok": True, "ms": 1.0, "from_a_later_version": [1, 2]})
    assert facts.dump()["from_a_later_version"] == [1, 2]
