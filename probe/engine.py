"""The engine: runs jobs concurrently, bounded, with attempts, deadlines and cancellation.

Scheduling only: which layer measures a target comes from a mapping of declared `Layer`s
(probe/layers/__init__.py; tests pass fake ones), what the facts mean is the classifier's
business. A fixed pool of `concurrency` workers pulls jobs from one iterator, so N silent
targets cost about ceil(N / concurrency) timeouts and memory stays flat however long the
catalog is. Every sample runs under the layer's deadline (`Layer.budget`), so no layer can hold
a worker past it. A target's failed sample waits to know whether the network is down
(NetworkWatch: the controls' first samples all failed, and then none of their repeats worked)
before it is repeated; with no network it is not, and no diagnosis is taken: the verdicts would
not change. Nor are a target's samples once the caller's `settled` says they settle its verdict. Each
sample's server-supplied text is scrubbed of the user's address before it is kept
(probe/scrub.py). Cancelling the task that awaits `run()` stops every worker; the
observations finished so far have already been handed to `on_done`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from probe import failures as F
from probe import scrub
from probe.layers import Context, Layer, LazyLayers
from probe.observations import (
    DeadlineFacts,
    DnsFallback,
    Facts,
    NotBuiltFacts,
    Observation,
    Sample,
)

if TYPE_CHECKING:
    from probe.catalog import Job

OnStart = Callable[["Job"], None]
OnDone = Callable[["Job", Observation], None]
Settled = Callable[["Job", Observation], bool]  # the samples so far settle the verdict


def sample_budget(job: Job, layer: Layer | None) -> float:
    """The most one sample may take before the engine gives up on it (a safety net only)."""
    return layer.budget(job) if layer is not None else job.timeout * 6 + 1.0


def _layer(layers: Mapping[str, Layer], scheme: str) -> Layer | None:
    try:
        return layers[scheme]
    except (KeyError, ModuleNotFoundError):
        return None


async def measure(job: Job, ctx: Context, layers: Mapping[str, Layer] | None = None,
                  settled: Settled | None = None) -> Observation:
    """All samples of one job, one after another (never in parallel: a censor's residual
    state from one attempt must not be blamed on, or hidden by, a simultaneous one); fewer
    when `settled` says the verdict cannot change."""
    scheme = job.endpoint.scheme
    layer = _layer(layers if layers is not None else _DEFAULT, scheme)
    observation = Observation()
    if layer is None:
        observation.samples.append(Sample(phases={"not_built": NotBuiltFacts(
            ok=False, failure=F.NOT_IMPLEMENTED, error=f"the {scheme} layer is not built")}))
        return observation
    budget = sample_budget(job, layer)
    clean = None if ctx.include_ip else ctx.scrubber
    loop = asyncio.get_running_loop()
    started = ctx.started if ctx.started is not None else loop.time()
    for attempt in range(job.attempts):
        began = loop.time()
        sample = await _sample(layer, job, ctx, budget)
        sample.at_ms = round((began - started) * 1000, 1)
        observation.samples.append(sample.scrubbed(clean) if clean is not None else sample)
        if job.is_control:
            ctx.network.control_sample(first=attempt == 0, ok=sample.ok)
        # A layer whose `attempts` are requests of one exchange (stun) runs it once, unless
        # the name did not resolve: one lost lookup is one failed sample, not a silent target.
        if layer.one_exchange(job) and not _failed_at_dns(sample):
            break
        if settled is not None and settled(job, observation):
            break  # e.g. a transfer far below its floor: two more windows would change nothing
        if (not sample.ok and not job.is_control and attempt + 1 < job.attempts
                and await ctx.network.dead()):
            break  # no network: another failure would change no verdict, only cost a timeout
        if not sample.ok and job.is_control and attempt >= 1 and ctx.network.down:
            break  # one repeat shows an outage at the start ended; more would only cost time
    if job.is_control:
        ctx.network.control_ended()
    steps: list[Facts] = []
    if not any(s.ok for s in observation.samples) and not ctx.network.down:
        if layer.diagnose is not None:
            try:
                async with asyncio.timeout(budget):
                    steps += await layer.diagnose(job, ctx, observation)
            except TimeoutError:
                steps.append(DeadlineFacts(ok=False, failure=F.TIMEOUT))
        steps += await _dns_fallback(layer, job, ctx, observation, budget)  # its own deadline
    for step in steps:
        observation.diagnosis[step.KEY] = step.scrubbed(clean) if clean is not None else step
    return observation


async def _sample(layer: Layer, job: Job, ctx: Context, budget: float) -> Sample:
    """One sample under the layer's deadline."""
    try:
        async with asyncio.timeout(budget):
            return await layer.measure(job, ctx)
    except TimeoutError:
        return Sample(phases={"deadline": DeadlineFacts(
            ok=False, ms=budget * 1000, failure=F.TIMEOUT,
            error=f"no result within the {budget:.1f} s deadline")})


async def _dns_fallback(layer: Layer, job: Job, ctx: Context, observation: Observation,
                        budget: float) -> list[Facts]:
    """Every sample failed at DNS and a baseline resolved the name: one sample at that address
    (as `address:` would), so that a name blocked by DNS is told from an unreachable service."""
    known = ctx.known_addresses.get(job.endpoint.host)
    if (not known or job.target.address or job.endpoint.scheme == "dns"
            or not all(_failed_at_dns(s) for s in observation.samples)):
        return []  # (a dns:// target is the name itself: no address can stand for it)
    at = dataclasses.replace(job, target=job.target.model_copy(update={"address": known[0]}))
    sample = await _sample(layer, at, ctx, budget)
    failed = sample.failed
    if failed is None:
        return [DnsFallback(ok=True, ms=_elapsed(sample), address=known[0])]
    layer_name, facts = failed
    return [DnsFallback(ok=False, ms=_elapsed(sample), failure=facts.failure, error=facts.error,
                        address=known[0], failed_layer=layer_name)]


def _elapsed(sample: Sample) -> float | None:
    times = [f.ms for f in sample.phases.values() if f.ms is not None]
    return round(sum(times), 3) if times else None


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
    settled: Settled | None = None,
) -> None:
    """Measure every job with at most `concurrency` in flight; report each through `on_done`.
    `layers`: the layer of each scheme (default: the real ones, imported as needed)."""
    queue = iter(jobs)
    chosen = layers if layers is not None else _DEFAULT

    async def worker() -> None:
        for job in queue:  # a shared iterator: each job is taken by exactly one worker
            if on_start:
                on_start(job)
            observation = await measure(job, ctx, chosen, settled)
            on_done(job, observation)

    if ctx.started is None:
        ctx.started = asyncio.get_running_loop().time()
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
