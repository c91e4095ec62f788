"""The engine with fake layers: its concurrency bound, attempts, deadlines, diagnosis and
cancellation, without a socket."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from probe import engine
from probe.catalog import Job
from probe.layers import Context, Layer
from probe.observations import Facts, Observation, OtherAddresses, Sample, TcpFacts


def jobs(n: int, make_job: Callable[..., Job], attempts: int = 1) -> list[Job]:
    return [make_job(f"tcp://127.0.0.{i % 250 + 1}:{1000 + i}", attempts=attempts)
            for i in range(n)]


class Gate:
    """A fake layer whose samples wait at a gate; it counts how many are in flight."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most = 0
        self.calls = 0
        self.opened = asyncio.Event()

    async def measure(self, job: Job, ctx: Context) -> Sample:
        self.calls += 1
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await self.opened.wait()
        finally:
            self.in_flight -= 1
        return Sample(phases={"tcp": TcpFacts(ok=True, ms=1.0)})


def run_engine(joblist: list[Job], layer: Layer, concurrency: int,
               until: Callable[[list[Observation]], bool] | None = None,
               ctx: Context | None = None) -> list[Observation]:
    done: list[Observation] = []

    async def main() -> None:
        context = ctx or Context(settings=_settings(joblist[0]))
        await engine.run(joblist, context, concurrency=concurrency,
                         on_done=lambda job, o: done.append(o), layers={"tcp": layer})

    asyncio.run(asyncio.wait_for(main(), 30))
    return done


def _settings(job: Job) -> Any:
    from probe.catalog import Settings

    return Settings()


def test_no_more_than_concurrency_in_flight(make_job: Callable[..., Job]) -> None:
    gate = Gate()

    async def main() -> int:
        done: list[Observation] = []
        task = asyncio.create_task(engine.run(
            jobs(40, make_job), Context(settings=_settings(make_job("tcp://127.0.0.1:1"))),
            concurrency=7, on_done=lambda j, o: done.append(o),
            layers={"tcp": Layer(measure=gate.measure, budget=lambda job: 30.0)}))
        while gate.in_flight < 7:
            await asyncio.sleep(0)
        for _ in range(50):  # let every worker that could start another job try to
            await asyncio.sleep(0)
        gate.opened.set()
        await task
        return len(done)

    assert asyncio.run(main()) == 40
    assert gate.most == 7 and gate.calls == 40


def test_each_sample_runs_under_the_layer_budget(make_job: Callable[..., Job]) -> None:
    async def hang(job: Job, ctx: Context) -> Sample:
        await asyncio.Event().wait()  # a layer that never returns
        raise AssertionError("unreachable")

    done = run_engine(jobs(3, make_job, attempts=2), Layer(measure=hang, budget=lambda j: 0.01),
                      concurrency=3)
    assert len(done) == 3
    for observation in done:
        assert [list(s.phases) for s in observation.samples] == [["deadline"], ["deadline"]]
        assert {s.phases["deadline"].failure for s in observation.samples} == {"timeout"}


def test_one_exchange_layers_are_called_once_and_diagnosis_follows_failures(
        make_job: Callable[..., Job]) -> None:
    calls: list[str] = []

    async def fail(job: Job, ctx: Context) -> Sample:
        calls.append("measure")
        return Sample(phases={"tcp": TcpFacts(ok=False, failure="timeout")})

    async def diagnose(job: Job, ctx: Context, observation: Observation) -> list[Facts]:
        calls.append(f"diagnose after {len(observation.samples)}")
        return [OtherAddresses(ok=True, tried=["192.0.2.9"], connected=["192.0.2.9"])]

    layer = Layer(measure=fail, budget=lambda j: 1.0, diagnose=diagnose,
                  one_exchange=lambda job: True)
    [observation] = run_engine(jobs(1, make_job, attempts=5), layer, concurrency=1)
    assert calls == ["measure", "diagnose after 1"]
    step = observation.step(OtherAddresses)
    assert step is not None and step.connected == ["192.0.2.9"]


def test_samples_stop_once_the_caller_says_the_verdict_is_settled(
        make_job: Callable[..., Job]) -> None:
    async def works(job: Job, ctx: Context) -> Sample:
        return Sample(phases={"tcp": TcpFacts(ok=True, ms=1.0)})

    seen: list[int] = []

    def settled(job: Job, observation: Observation) -> bool:
        seen.append(len(observation.samples))
        return len(observation.samples) == 2

    async def main() -> list[Observation]:
        done: list[Observation] = []
        await engine.run(jobs(1, make_job, attempts=5),
                         Context(settings=_settings(make_job("tcp://127.0.0.1:1"))),
                         concurrency=1, on_done=lambda j, o: done.append(o),
                         layers={"tcp": Layer(measure=works, budget=lambda j: 1.0)},
                         settled=settled)
        return done

    [observation] = asyncio.run(main())
    assert seen == [1, 2] and len(observation.samples) == 2


def test_cancelling_the_run_stops_every_worker_and_keeps_what_finished(
        make_job: Callable[..., Job]) -> None:
    gate = Gate()
    finished: list[Observation] = []

    async def quick_then_stuck(job: Job, ctx: Context) -> Sample:
        if job.endpoint.port == 1000:
            return Sample(phases={"tcp": TcpFacts(ok=True, ms=1.0)})
        return await gate.measure(job, ctx)

    async def main() -> None:
        task = asyncio.create_task(engine.run(
            jobs(10, make_job), Context(settings=_settings(make_job("tcp://127.0.0.1:1"))),
            concurrency=4, on_done=lambda j, o: finished.append(o),
            layers={"tcp": Layer(measure=quick_then_stuck, budget=lambda j: 30.0)}))
        while gate.in_flight < 4:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert gate.in_flight == 0  # every stuck sample was cancelled, none left running

    asyncio.run(asyncio.wait_for(main(), 30))
    assert len(finished) == 1 and finished[0].samples[0].ok


def test_a_scheme_without_a_layer_is_one_untestable_sample(make_job: Callable[..., Job]) -> None:
    async def main() -> Observation:
        job = make_job("tcp://127.0.0.1:1")
        return await engine.measure(job, Context(settings=_settings(job)), layers={})

    observation = asyncio.run(main())
    [sample] = observation.samples
    assert sample.failed is not None and sample.failed[1].failure == "not_implemented"


def test_server_text_is_scrubbed_before_it_is_kept(make_job: Callable[..., Job]) -> None:
    async def echo(job: Job, ctx: Context) -> Sample:
        ctx.scrubber.know(54321)
        return Sample(phases={"tcp": TcpFacts(
            ok=False, failure="connection_reset", address="192.0.2.1",
            error="reset by 10.9.8.7:54321 (port 54321)")})

    job = make_job("tcp://192.0.2.1:1")
    [observation] = run_engine([job], Layer(measure=echo, budget=lambda j: 1.0), concurrency=1)
    tcp = observation.samples[0].get(TcpFacts)
    assert tcp is not None and tcp.error == "reset by <address> (port <port>)"
    assert tcp.address == "192.0.2.1"  # the target's address is a fact, not echoed text
    kept = run_engine([job], Layer(measure=echo, budget=lambda j: 1.0), concurrency=1,
                      ctx=Context(settings=_settings(job), include_ip=True))
    kept_tcp = kept[0].samples[0].get(TcpFacts)
    assert kept_tcp is not None and "10.9.8.7" in (kept_tcp.error or "")


def test_with_no_network_failing_samples_are_not_repeated(make_catalog: Callable[..., Any]) -> None:
    """Every control's first sample failed and none worked: a failing sample is not repeated
    and no diagnosis is taken (every failing verdict is network.down anyway); a sample that
    works goes on as usual."""
    from probe.layers import NetworkWatch

    loaded = make_catalog("tcp://192.0.2.1:1", "tcp://192.0.2.2:2", attempts=3)
    controls = [j for j in loaded.jobs()]
    control_jobs = [dataclasses.replace(j, platform=None, feature=None) for j in controls]
    working = next(make_catalog("tcp://192.0.2.3:3", attempts=3).jobs())
    failing = next(make_catalog("tcp://192.0.2.4:4", attempts=3).jobs())
    diagnosed: list[str] = []

    async def measure(job: Job, ctx: Context) -> Sample:
        await asyncio.sleep(0)
        ok = job.endpoint.port == 3
        return Sample(phases={"tcp": TcpFacts(ok=ok, failure=None if ok else "timeout")})

    async def diagnose(job: Job, ctx: Context, observation: Observation) -> list[Facts]:
        diagnosed.append(job.target.url)
        return []

    layer = Layer(measure=measure, budget=lambda j: 1.0, diagnose=diagnose)
    ctx = Context(settings=loaded.settings, network=NetworkWatch(controls=2))
    done = run_engine([*control_jobs, working, failing], layer, concurrency=1, ctx=ctx)
    # one at a time: the first control took its three samples before the second one failed;
    # that one repeats once (an outage at the start would have ended by then), not twice
    assert [len(o.samples) for o in done] == [3, 2, 3, 1]
    assert diagnosed == ["tcp://192.0.2.1:1"] and ctx.network.down  # before it was down


@pytest.mark.parametrize(("control_works", "target_samples"), [(False, 1), (True, 3)])
def test_a_failed_sample_waits_for_the_controls_before_it_is_repeated(
        make_catalog: Callable[..., Any], control_works: bool, target_samples: int) -> None:
    """A target failing while the control's first sample is still out waits for it: a dead
    network is known before the repeats (then none is taken), a live one lets them go on."""
    from probe.layers import NetworkWatch

    loaded = make_catalog("tcp://192.0.2.1:1", attempts=3)
    control = dataclasses.replace(next(loaded.jobs()), platform=None, feature=None)
    target = next(make_catalog("tcp://192.0.2.4:4", attempts=3).jobs())
    gate = asyncio.Event()
    order: list[str] = []

    async def measure(job: Job, ctx: Context) -> Sample:
        if job.is_control:
            await gate.wait()  # a control slower than the target's first sample
            ok = control_works
        else:
            order.append("target sample")
            if len(order) == 1:
                asyncio.get_running_loop().call_later(0.01, gate.set)
            ok = False
        return Sample(phases={"tcp": TcpFacts(ok=ok, failure=None if ok else "timeout")})

    ctx = Context(settings=loaded.settings, network=NetworkWatch(controls=1))
    done: dict[str, Observation] = {}

    async def main() -> None:
        await engine.run([control, target], ctx, concurrency=2,
                         on_done=lambda job, o: done.update({job.target.url: o}),
                         layers={"tcp": Layer(measure=measure, budget=lambda j: 5.0)})

    asyncio.run(asyncio.wait_for(main(), 30))
    assert len(done[target.target.url].samples) == target_samples
    assert ctx.network.down is not control_works


def test_an_outage_at_the_start_lets_the_targets_go_on_once_a_control_works(
        make_catalog: Callable[..., Any]) -> None:
    """Every control's first sample fails, a repeat works (the network came back): the
    target's failed sample waited for that and is repeated, not dropped as network.down."""
    from probe.layers import NetworkWatch

    loaded = make_catalog("tcp://192.0.2.1:1", attempts=3)
    control = dataclasses.replace(next(loaded.jobs()), platform=None, feature=None)
    target = next(make_catalog("tcp://192.0.2.4:4", attempts=3).jobs())
    back = asyncio.Event()  # the outage ends
    samples: dict[str, list[bool]] = {"control": [], "target": []}

    async def measure(job: Job, ctx: Context) -> Sample:
        kind = "control" if job.is_control else "target"
        if kind == "control":
            await asyncio.sleep(0.01)  # each control sample ends after the target's first
        ok = back.is_set()
        if kind == "control":
            back.set()  # the outage ends after the control's first sample
        samples[kind].append(ok)
        return Sample(phases={"tcp": TcpFacts(ok=ok, failure=None if ok else "timeout")})

    ctx = Context(settings=loaded.settings, network=NetworkWatch(controls=1))

    async def main() -> None:
        await engine.run([control, target], ctx, concurrency=2, on_done=lambda j, o: None,
                         layers={"tcp": Layer(measure=measure, budget=lambda j: 5.0)})

    asyncio.run(asyncio.wait_for(main(), 30))
    assert samples["control"][0] is False and True in samples["control"]
    assert samples["target"][0] is False and samples["target"][-1] is True
    assert not ctx.network.down
