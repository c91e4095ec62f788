"""The values the rules share: what is judged (Subject), against what (Baseline), the outcome
(Verdict) and what one diagnosis step or check found (Finding). All frozen: rules return new
values, never change the ones they are given."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from probe.results import Key, Run, Status, TargetResult, index_targets


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

    @property
    def scheme(self) -> str:
        return self.url.partition("://")[0].lower()


@dataclass(frozen=True)
class Verdict:
    status: Status
    reason: str
    detail: str


@dataclass(frozen=True)
class Finding:
    """What one diagnosis step (or run-level rule) found: words for `detail`, and optionally a
    refined status and reason."""

    text: str
    status: Status | None = None
    reason: str | None = None
    conclusion: str | None = None  # what the refined reason concludes, for the head of detail


@dataclass(frozen=True)
class Baseline:
    """An earlier run, indexed once by its caller: a run of 10,000 targets looks each up once."""

    run: Run
    path: str | None = None
    targets: dict[Key, TargetResult] = field(default_factory=dict)

    @classmethod
    def of(cls, run: Run | None, path: str | None = None) -> Baseline | None:
        return None if run is None else cls(run, path, index_targets(run))

    def find(self, key: Key) -> TargetResult | None:
        """The same target in the baseline run, if it is there."""
        return self.targets.get(key)

    def everything(self) -> Iterable[TargetResult]:
        return self.targets.values()


def join(*parts: str | None) -> str:
    """Parts of a `detail`, in order, the empty ones left out."""
    return "; ".join(p for p in parts if p)
