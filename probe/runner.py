"""One run, from a loaded catalog to a judged `Run`: engine, classifier and streaming output.

Controls are queued first. A target finished before the controls are all in waits, so that each
JSONL line carries the same verdict the final document will (a dead network changes every
verdict to inconclusive). Cancelling the run keeps what was finished: `finish()` judges it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from probe import __version__, classify, engine
from probe.catalog import Job, LoadedCatalog
from probe.layers import Context
from probe.observations import Observation
from probe.results import CatalogRef, NetworkResult, Run, TargetResult

OnTarget = Callable[[TargetResult], None]


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


@dataclass
class Runner:
    """Collects observations as the engine finishes them, and judges them."""

    loaded: LoadedCatalog
    only: set[str] | None = None
    include_ip: bool = False
    baseline: Run | None = None
    baseline_path: str | None = None
    on_target: OnTarget | None = None  # called once per finished target, final verdict
    on_start: Callable[[Job], None] | None = None
    concurrency: int | None = None
    started_at: str = field(default_factory=now_iso)
    done: list[tuple[Job, Observation]] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.jobs = list(self.loaded.jobs(self.only))
        self._controls_left = sum(1 for j in self.jobs if j.is_control)
        self._held: list[tuple[Job, Observation]] = []
        self._network: NetworkResult | None = None
        self.interrupted = False

    @property
    def needs(self) -> dict[tuple[str, str], str]:
        return {(pid, fid): f.need for pid, p in self.loaded.catalog.platforms.items()
                for fid, f in p.features.items()}

    @property
    def names(self) -> dict[str, str | None]:
        return {pid: p.name for pid, p in self.loaded.catalog.platforms.items()}

    def _judge_one(self, job: Job, observation: Observation) -> TargetResult:
        result = classify.judge_target(job, observation, baseline=self.baseline)
        if self._network is not None:
            classify.apply_network(self._network, [result])
        return result

    def _finished(self, job: Job, observation: Observation) -> None:
        self.done.append((job, observation))
        if job.is_control:
            self._controls_left -= 1
            if self._controls_left == 0:
                controls = [classify.judge_target(j, o, baseline=self.baseline)
                            for j, o in self.done if j.is_control]
                self._network = classify.judge_network(controls)
                held, self._held = self._held, []
                for j, o in held:
                    self._emit(j, o)
            return
        if self._controls_left > 0:
            self._held.append((job, observation))
        else:
            self._emit(job, observation)

    def _emit(self, job: Job, observation: Observation) -> None:
        if self.on_target is not None:
            self.on_target(self._judge_one(job, observation))

    async def run(self) -> None:
        ctx = Context(settings=self.loaded.settings, include_ip=self.include_ip)
        concurrency = self.concurrency or self.loaded.settings.concurrency
        try:
            await engine.run(self.jobs, ctx, concurrency=concurrency,
                             on_done=self._finished, on_start=self.on_start)
        except asyncio.CancelledError:
            self.interrupted = True
            raise
        finally:
            await ctx.aclose()

    def finish(self) -> Run:
        """The judged run of everything finished so far, in catalog order."""
        order = {id(j): i for i, j in enumerate(self.jobs)}
        done = sorted(self.done, key=lambda jo: order[id(jo[0])])
        network, targets, features, platforms = classify.judge_run(
            done, self.needs, self.names, baseline=self.baseline)
        return Run(
            probe_version=__version__,
            started_at=self.started_at,
            finished_at=now_iso(),
            catalog=CatalogRef(path=self.loaded.path, sha256=self.loaded.sha256),
            baseline=self.baseline_path,
            interrupted=self.interrupted,
            network=network,
            targets=targets,
            features=features,
            platforms=platforms,
        )
