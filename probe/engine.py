"""The engine: runs jobs concurrently, bounded, with attempts, deadlines and cancellation.

Scheduling only: which layer measures a target comes from a mapping of declared `Layer`s
(probe/layers/__init__.py; tests pass fake ones), what the facts mean is the classifier's
business. A fixed pool of `concurrency` workers pulls jobs from one iterator, so N silent
targets cost about ceil(N / concurrency) timeouts and memory stays flat however long the
catalog is. Every sample runs under the layer's deadline (`Layer.budget`), so no layer can hold
a worker past it. Each sample's server-supplied text is scrubbed of the user's address before
it is kept (probe/scrub.py). Cancelling the task that awaits `run()` stops every worker; the
observations finished so far have already been handed to `on_done`.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from probe import failures as F
from probe import scrub
from probe.layers import Context, Layer, LazyLayers
from probe.observations import DeadlineFacts, Facts, NotBuiltFacts, Observation, Sample

if TYPE_CHECKING:
    from probe.catalog import Job

OnStart = Callable[["Job"], None]
OnDone = Callable[["Job", Observation], None]


def sample_budget(job: Job, layer: Layer | None) -> float:
    """The most one sample may take before the engine gives up on it (a safety net only)."""
    return layer.budget(job) if layer is not None else job.timeout * 6 + 1.0


def _layer(layers: Mapping[str, Layer], scheme: str) -> Layer | None:
    try:
        return layers[scheme]
    except (KeyError, ModuleNotFoundError):
        return None


async def measure(job: Job, ctx: Context, layers: Mapping[str, Layer] | None = None
                  ) -> Observation:
    """All samples of one job, one after another (never in parallel: a censor's residual
    state from one attempt must not be blamed on, or hidden by, a simultaneous one)."""
    scheme = job.endpoint.scheme
    layer = _layer(layers if layers is not None else _DEFAULT, scheme)
    observation = Observation()
    if layer is None:
        observation.samples.append(Sample(phases={"not_built": NotBuiltFacts(
            ok=False, failure=F.NOT_IMPLEMENTED, error=f"the {scheme} layer is not built")}))
        return observation
    budget = sample_budget(job, layer)
    clean = None if ctx.include_ip else ctx.scrubber
    for _ in range(job.attempts):
        try:
            async with asyncio.timeout(budget):
                sample = await layer.measure(job, ctx)
        except TimeoutError:
            sample = Sample(phases={"deadline": DeadlineFacts(
                ok=False, ms=budget * 1000, failure=F.TIMEOUT,
                error=f"no result within the {budget:.1f} s deadline")})
        observation.samples.append(sample.scrubbed(clean) if clean is not None else sample)
        # A layer whose `attempts` are requests of one exchange (stun) runs it once, unless
        # the name did not resolve: one lost lookup is one failed sample, not a silent target.
        if layer.one_exchange and not _failed_at_dns(sample):
            break
    if layer.diagnose is not None and not any(s.ok for s in observation.samples):
        steps: list[Facts]
        try:
            async with asyncio.timeout(budget):
                steps = await layer.diagnose(job, ctx, observation)
        except TimeoutError:
            steps = [DeadlineFacts(ok=False, failure=F.TIMEOUT)]
        for step in steps:
            observation.diagnosis[step.KEY] = step.scrubbed(clean) if clean is not None else step
    return observation


def _failed_at_dns(sample: Sample) -> bool:
    failed = sample.failed
    return failed is not None and failed[0] == "dns"


_DEFAULT = LazyLayers()


async def run(
    jobs: Iterable[Job],
    ctx: Context,
    *,
    concurrency: int,
    on_done: OnDone,
    on_start: OnStart | None = None,
    layers: Mapping[str, Layer] | None = None,
) -> None:
    """Measure every job with at most `concurrency` in flight; report each through `on_done`.
    `layers`: the layer of each scheme (default: the real ones, imported as needed)."""
    queue = iter(jobs)
    chosen = layers if layers is not None else _DEFAULT

    async def worker() -> None:
        for job in queue:  # a shared iterator: each job is taken by exactly one worker
            if on_start:
                on_start(job)
            observation = await measure(job, ctx, chosen)
            on_done(job, observation)

    # The run's own addresses and ports, for the scrubber, whatever code opens a socket.
    token = scrub.CURRENT.set(ctx.scrubber)
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
        scrub.CURRENT.reset(token)
