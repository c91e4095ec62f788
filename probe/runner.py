"""One run, from a loaded catalog to a judged `Run`: engine, classifier and streaming output.

Controls are queued first. Each target is judged once, as it finishes: streamed output and the
final document share that verdict (they used to judge every target twice). A target finished
before the controls are all in waits, so that each streamed line carries the same verdict the
final document will (a dead network changes every verdict to inconclusive); STUN and TURN
targets wait for the end of the run, whose other results say why a call fails. Cancelling the run
keeps what was finished: `finish()` puts it together, and names every target that was not
measured (`target.interrupted`) rather than leaving it out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from probe import __version__, classify, engine
from probe.catalog import Job, LoadedCatalog
from probe.classify import Baseline
from probe.classify.network import in_light_of
from probe.layers import Context, NetworkWatch
from probe.observations import DnsFacts, Observation
from probe.results import CatalogRef, NetworkResult, Run, TargetResult

OnTarget = Callable[[TargetResult], None]
# Schemes whose targets are judged in the light of the whole run (why a call fails).
_JUDGED_AT_THE_END = ("stun", "turn", "reflect")


def known_addresses(baseline: Run | None) -> dict[str, list[str]]:
    """The addresses a baseline's resolver gave each name: a name that fails at DNS now is
    tried there too (engine._dns_fallback)."""
    known: dict[str, list[str]] = {}
    if baseline is None:
        return known
    for target in [*baseline.network.controls, *baseline.targets]:
        for sample in target.observation.samples:
            dns = sample.get(DnsFacts)
            if dns is not None and dns.ok and dns.answers and dns.name and not dns.literal:
                known.setdefault(dns.name, list(dns.answers))
    return known


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
    done: list[tuple[Job, TargetResult]] = field(default_factory=list)  # judged, no network yet
    jobs: list[Job] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.jobs = list(self.loaded.jobs(self.only))
        self._baseline = Baseline.of(self.baseline, self.baseline_path)
        self._controls_left = sum(1 for j in self.jobs if j.is_control)
        self._held: list[tuple[Job, TargetResult]] = []
        self._streamed: set[int] = set()  # id() of the jobs whose result went to on_target
        self._network: NetworkResult | None = None
        self.interrupted = False

    @property
    def needs(self) -> dict[tuple[str, str], str]:
        return {(pid, fid): f.need for pid, p in self.loaded.catalog.platforms.items()
                for fid, f in p.features.items()}

    @property
    def names(self) -> dict[str, str | None]:
        return {pid: p.name for pid, p in self.loaded.catalog.platforms.items()}

    def add(self, job: Job, observation: Observation) -> None:
        """One finished target: judged now, streamed when the network is known."""
        result = classify.judge_target(job, observation, self._baseline)
        self.done.append((job, result))
        if job.is_control:
            self._controls_left -= 1
            if self._controls_left == 0:
                self._network = classify.judge_network([r for j, r in self.done if j.is_control])
                held, self._held = self._held, []
                for j, r in held:
                    self._emit(j, r)
            return
        if job.endpoint.scheme in _JUDGED_AT_THE_END or job.is_reflector:
            return  # its verdict reads the whole run (classify/calls.py): streamed by finish
        if self._controls_left > 0:
            self._held.append((job, result))
        else:
            self._emit(job, result)

    def _emit(self, job: Job, result: TargetResult) -> None:
        if self.on_target is not None:
            assert self._network is not None or self._controls_left == 0
            if self._network is not None:
                result = in_light_of(self._network, result)
            self._streamed.add(id(job))
            self.on_target(result)

    async def run(self) -> None:
        ctx = Context(settings=self.loaded.settings, include_ip=self.include_ip,
                      known_addresses=known_addresses(self.baseline),
                      network=NetworkWatch(controls=sum(1 for j in self.jobs if j.is_control)))
        concurrency = self.concurrency or self.loaded.settings.concurrency
        # Controls first (every verdict waits for them), then the call-like flows (a few
        # seconds each: started early, they overlap the rest instead of trailing it).
        order = sorted(self.jobs, key=lambda j: (not j.is_control, j.call is None))
        try:
            await engine.run(order, ctx, concurrency=concurrency, on_done=self.add,
                             on_start=self.on_start, settled=self._settled)
        except asyncio.CancelledError:
            self.interrupted = True
            raise
        finally:
            await ctx.aclose()

    def _settled(self, job: Job, observation: Observation) -> bool:
        return classify.settled(job, observation, self._baseline)

    def finish(self) -> Run:
        """The judged run so far, in catalog order; when interrupted, every target not yet
        measured is there too, `inconclusive target.interrupted`."""
        judged = {id(j): r for j, r in self.done}
        if self.interrupted:
            for job in self.jobs:
                if id(job) not in judged:
                    judged[id(job)] = classify.judge_target(
                        job, Observation(interrupted=True), self._baseline)
        ordered = [(j, judged[id(j)]) for j in self.jobs if id(j) in judged]
        controls = [r for j, r in ordered if j.is_control]
        reflector = [r for j, r in ordered if j.is_reflector]
        targets = [r for j, r in ordered if j.platform is not None]
        network, targets, features, platforms = classify.judge_groups(
            classify.judge_network(controls), targets, self.needs, self.names, reflector)
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
            reflector=reflector,
        )

    def not_streamed(self, run: Run) -> list[TargetResult]:
        """The targets of `run` (from finish()) that on_target has not been given."""
        jobs = [j for j in self.jobs if j.platform is not None]
        judged = {id(j) for j, _ in self.done}
        if self.interrupted:
            judged = {id(j) for j in jobs}
        order = [j for j in jobs if id(j) in judged]
        return [t for j, t in zip(order, run.targets, strict=True) if id(j) not in self._streamed]
