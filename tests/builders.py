"""Builders the tests share: facts as saved runs hold them, observations, runs, and judging.

Facts are built as plain mappings, the shape a result file holds: `Sample` and `Observation`
type them by their key (probe/observations.py), exactly as when a saved run is read, so a
builder can never drift from what the layers and the readers agree on.
"""

from __future__ import annotations

from typing import Any

from probe import classify
from probe.classify import Baseline, Subject
from probe.observations import Observation, Sample
from probe.results import CatalogRef, NetworkResult, Run, TargetResult
from probe.thresholds import DEFAULT, Thresholds

Facts = dict[str, Any]


def facts(ok: bool = True, **values: Any) -> Facts:
    """One layer's facts (or a diagnosis step's), as a saved run holds them."""
    return {"ok": ok, **values}


def ph(ok: bool = True, ms: float | None = 10.0, failure: str | None = None,
       **values: Any) -> Facts:
    """Facts with a time (10 ms unless given) and, when failed, a failure fact."""
    return {"ok": ok, "ms": ms, "failure": failure, **values}


def sample(**layers: Facts) -> Sample:
    """A sample of layers in the order given: sample(dns=..., tcp=...)."""
    return Sample.model_validate({"phases": layers})


def obs(*samples: Sample, **diagnosis: Facts) -> Observation:
    return Observation.model_validate({"samples": list(samples), "diagnosis": diagnosis})


def run_of(targets: list[TargetResult], controls: list[TargetResult] | None = None,
           **fields: Any) -> Run:
    return Run(probe_version="t", started_at="", finished_at="",
               catalog=CatalogRef(path="", sha256=""),
               network=NetworkResult(status="ok", controls=controls or []), targets=targets,
               **fields)


def judge_subject(subject: Subject, observation: Observation, baseline: Run | None = None,
                  th: Thresholds = DEFAULT) -> TargetResult:
    """classify.judge_subject with a baseline run indexed here, as the runner does once."""
    return classify.judge_subject(subject, observation, Baseline.of(baseline), th)
