"""The engine: runs jobs concurrently, bounded, with attempts, deadlines and cancellation.

Scheduling only: which layer measures a target is looked up in `probe.layers`, what the facts
mean is `classify.py`'s business. A fixed pool of `concurrency` workers pulls jobs from one
iterator, so N silent targets cost about ceil(N / concurrency) timeouts and memory stays flat
however long the catalog is. Cancelling the task that awaits `run()` stops every worker; the
observations finished so far have already been handed to `on_done`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from probe.layers import Context, layer_module
from probe.observations import Observation, Phase, Sample

if TYPE_CHECKING:
    from probe.catalog import Job

OnStart = Callable[["Job"], None]
OnDone = Callable[["Job", Observation], None]


def sample_budget(job: Job) -> float:
    """The most one sample may take before the engine gives up on it (a safety net only).

    Layers bound each operation by `job.timeout` themselves; a sample runs at most a handful of
    operations (dns, connect, handshake, request, a diagnosis step), plus a sustained exchange.
    """
    module = layer_module(job.endpoint.scheme)
    budget = getattr(module, "budget", None)
    if budget is not None:
        return float(budget(job))
    return job.timeout * 6 + 1.0


async def measure(job: Job, ctx: Context) -> Observation:
    """All samples of one job, one after another (never in parallel: a censor's residual
    state from one attempt must not be blamed on, or hidden by, a simultaneous one)."""
    module = layer_module(job.endpoint.scheme)
    observation = Observation()
    if module is None:
        layer = job.endpoint.scheme
        phase = Phase(ok=False, failure="not_implemented", error=f"the {layer} layer is not built")
        observation.samples.append(Sample(phases={layer: phase}))
        return observation
    # A layer that sends `attempts` requests in one exchange (stun) is called once.
    rounds = 1 if getattr(module, "MEASURES_ATTEMPTS", False) else job.attempts
    budget = sample_budget(job)
    for _ in range(rounds):
        try:
            async with asyncio.timeout(budget):
                sample = await module.measure(job, ctx)
        except TimeoutError:
            sample = Sample(phases={"deadline": Phase(
                ok=False, ms=budget * 1000, failure="timeout",
                error=f"no result within the {budget:.1f} s deadline")})
        observation.samples.append(sample)
    diagnose = getattr(module, "diagnose", None)
    if diagnose is not None and not any(s.ok for s in observation.samples):
        try:
            async with asyncio.timeout(budget):
                observation.diagnosis.update(await diagnose(job, ctx, observation))
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

    async with asyncio.TaskGroup() as group:
        for _ in range(max(1, concurrency)):
            group.create_task(worker())
