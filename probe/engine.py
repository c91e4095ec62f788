"""The engine: runs jobs concurrently, bounded, with attempts, deadlines and cancellation.

Scheduling only: which layer measures a target is looked up in `probe.layers`, what the facts
mean is `classify.py`'s business. A fixed pool of `concurrency` workers pulls jobs from one
iterator, so N silent targets cost about ceil(N / concurrency) timeouts and memory stays flat
however long the catalog is. Cancelling the task that awaits `run()` stops every worker; the
observations finished so far have already been handed to `on_done`.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from probe.layers import Context, Measure, layer_module
from probe.observations import Observation, Phase, Sample

if TYPE_CHECKING:
    from probe.catalog import Job

OnStart = Callable[["Job"], None]
OnDone = Callable[["Job", Observation], None]
Diagnose = Callable[["Job", Context, Observation], Awaitable[dict[str, Phase]]]


@dataclass(frozen=True)
class _Layer:
    """What the engine needs of a layer module, looked up once per scheme and run."""

    measure: Measure
    budget: Callable[[Job], float] | None
    diagnose: Diagnose | None
    rounds_once: bool  # the layer sends `attempts` requests in one exchange (stun)


_LAYERS: dict[str, _Layer | None] = {}


def _layer(scheme: str) -> _Layer | None:
    # A dict lookup per job instead of importlib's per call: it showed in profiles of big runs.
    if scheme not in _LAYERS:
        module = layer_module(scheme)
        _LAYERS[scheme] = None if module is None else _Layer(
            measure=module.measure,
            budget=getattr(module, "budget", None),
            diagnose=getattr(module, "diagnose", None),
            rounds_once=getattr(module, "MEASURES_ATTEMPTS", False),
        )
    return _LAYERS[scheme]


def sample_budget(job: Job, layer: _Layer | None = None) -> float:
    """The most one sample may take before the engine gives up on it (a safety net only).

    Layers bound each operation by `job.timeout` themselves; a sample runs at most a handful of
    operations (dns, connect, handshake, request, a diagnosis step), plus a sustained exchange.
    """
    layer = layer or _layer(job.endpoint.scheme)
    if layer is not None and layer.budget is not None:
        return float(layer.budget(job))
    return job.timeout * 6 + 1.0


async def measure(job: Job, ctx: Context) -> Observation:
    """All samples of one job, one after another (never in parallel: a censor's residual
    state from one attempt must not be blamed on, or hidden by, a simultaneous one)."""
    scheme = job.endpoint.scheme
    layer = _layer(scheme)
    observation = Observation()
    if layer is None:
        phase = Phase(ok=False, failure="not_implemented", error=f"the {scheme} layer is not built")
        observation.samples.append(Sample(phases={scheme: phase}))
        return observation
    # A layer that sends `attempts` requests in one exchange (stun) is called once.
    rounds = 1 if layer.rounds_once else job.attempts
    budget = sample_budget(job, layer)
    for _ in range(rounds):
        try:
            async with asyncio.timeout(budget):
                sample = await layer.measure(job, ctx)
        except TimeoutError:
            sample = Sample(phases={"deadline": Phase(
                ok=False, ms=budget * 1000, failure="timeout",
                error=f"no result within the {budget:.1f} s deadline")})
        observation.samples.append(sample)
    if layer.diagnose is not None and not any(s.ok for s in observation.samples):
        try:
            async with asyncio.timeout(budget):
                observation.diagnosis.update(await layer.diagnose(job, ctx, observation))
        except TimeoutError:
            observation.diagnosis["deadline"] = Phase(ok=False, failure="timeout")
    return observation


async def run(
    jobs: Iterable[Job],
    ctx: Context,
    *,
    concurrency: int,
    on_done: OnDone,
    on_start: OnStart | None = None,
) -> None:
    """Measure every job with at most `concurrency` in flight; report each through `on_done`."""
    queue = iter(jobs)

    async def worker() -> None:
        for job in queue:  # a shared iterator: each job is taken by exactly one worker
            if on_start:
                on_start(job)
            observation = await measure(job, ctx)
            on_done(job, observation)

    # What exists now (imports, the catalog: 100,000 objects and more) outlives the run: frozen,
    # the cyclic collector does not walk it again and again while targets are in flight (a full
    # pass took 30-50 ms, a sixth of an all-silent 1,000-target run's overhead; ~10 % of a
    # STUN check's CPU). Unfrozen after, so a long `watch` or `serve` process still frees it.
    gc.freeze()
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, concurrency)):
                group.create_task(worker())
    finally:
        gc.unfreeze()
