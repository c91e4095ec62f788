"""The benchmark: the probe next to minimal raw-asyncio clients, on loopback, in one command.

    python bench/run.py                    # everything: about 3 minutes on 2 cores
    python bench/run.py tcp stun silent    # some sections only (see SECTIONS)
    BENCH_ROUNDS=3 python bench/run.py     # fewer rounds (default 5)
    python bench/run.py --loop asyncio     # the standard loop only (default: uvloop too, if installed)

Per layer (tcp, tls, https, stun, quic) the probe's engine runs N targets through its layers and
a minimal raw-asyncio client (bench/raw.py) does the same operation against the same server
(bench/servers.py, in a process of its own), rounds interleaved so a busy shared machine hits
both alike. Each figure is the median of the rounds: operations per second (wall) and the
client's CPU per operation; `probe/raw` is the goal's ratio (>= 0.8x). `client busy` is each
client's CPU share of the wall time: well under 100 % means it waited for the server (the
QUIC server, aioquic on one core, is as slow as its clients), and then the CPU ratio, not the
rates, says what the probe costs. Catalog loading is
outside the timed part, each side's per-run setup (SSL contexts) inside. Then whole runs: 1,000
silent targets against one target's own time, wall time and peak RSS of `probe run` over 100,
1,000 and 10,000 targets, time to the first result line, and start-up time. Figures are
printed, never asserted; the last table sets them against the goals.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import raw
from servers import NAME, Server

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None
LoopFactory = Callable[[], asyncio.AbstractEventLoop]
GOALS: list[tuple[str, str, str, bool]] = []  # (goal, figure, target, met), for the summary


def goal(name: str, figure: str, target: str, met: bool) -> None:
    GOALS.append((name, figure, target, met))


def loop_factory(name: str) -> LoopFactory:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop  # type: ignore[no-any-return]
    return asyncio.new_event_loop


def timed(loop: LoopFactory, make: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """(wall s, CPU s) of one coroutine on a fresh loop of the given kind."""
    with asyncio.Runner(loop_factory=loop) as runner:
        cpu0, t0 = time.process_time(), time.perf_counter()
        runner.run(make())  # type: ignore[arg-type]
        return time.perf_counter() - t0, time.process_time() - cpu0


def catalog_text(urls: list[str], *, timeout: str = "5s", attempts: int = 1,
                 concurrency: int = 32, ca_file: str | None = None) -> str:
    settings = f"timeout: {timeout}, attempts: {attempts}, concurrency: {concurrency}"
    if ca_file:
        settings += f", ca_file: '{ca_file}'"
    lines = ["version: 1", f"settings: {{{settings}}}", "platforms:", "  bench:",
             "    features:", "      f:"]
    return "\n".join([*lines, *(f"        - {u}" for u in urls)]) + "\n"


async def engine_run(jobs: list[Any], settings: Any, concurrency: int) -> None:
    """The probe's engine and layers over the jobs (no judging, no output); all must be ok."""
    from probe import engine
    from probe.layers import Context

    ctx = Context(settings=settings)
    failed: list[Any] = []

    def done(job: Any, observation: Any) -> None:
        if not all(s.ok for s in observation.samples):
            failed.append(observation)

    try:
        await engine.run(jobs, ctx, concurrency=concurrency, on_done=done)
    finally:
        await ctx.aclose()
    if failed:
        sample = failed[0].samples[0]
        raise RuntimeError(f"{len(failed)} targets failed, e.g. {sample.failed}")


# --- per layer: the probe's engine vs a raw-asyncio client ---------------------------------


@dataclass(frozen=True)
class Layer:
    n: int  # operations per round
    concurrency: int
    url: str  # a catalog target, {port} filled in
    tls: bool = False


LAYERS = {
    "tcp": Layer(2000, 32, "tcp://127.0.0.1:{port}"),
    "tls": Layer(800, 32, "{{url: 'tls://" + NAME + ":{port}', address: 127.0.0.1}}", tls=True),
    "https": Layer(500, 32, "{{url: 'https://" + NAME + ":{port}/', address: 127.0.0.1}}",
                   tls=True),
    "stun": Layer(3000, 32, "stun://127.0.0.1:{port}"),
    "quic": Layer(200, 16, "{{url: 'quic://" + NAME + ":{port}', address: 127.0.0.1}}", tls=True),
}


def median_rate(n: int, runs: list[tuple[float, float]]) -> tuple[float, float]:
    """(operations/s, CPU ms per operation), medians."""
    return (statistics.median(n / w for w, _ in runs),
            statistics.median(c * 1000 / n for _, c in runs))


def bench_layer(kind: str, loops: list[str]) -> str:
    from probe import catalog

    spec = LAYERS[kind]
    lines = []
    with Server(kind) as server:
        text = catalog_text([spec.url.format(port=server.port)] * spec.n,
                            concurrency=spec.concurrency,
                            ca_file=server.ca_file if spec.tls else None)
        loaded = catalog.loads(text)
        jobs = list(loaded.jobs())
        client = raw.CLIENTS[kind]
        for loop_name in loops:
            loop = loop_factory(loop_name)

            def probe_side(j: list[Any] = jobs) -> Awaitable[None]:
                return engine_run(j, loaded.settings, spec.concurrency)

            def raw_side(n: int = spec.n) -> Awaitable[None]:
                return client(server.port, server.ca_file, n, spec.concurrency)

            warm = min(50, spec.n)  # imports, first trust-store loads: once per process
            timed(loop, lambda w=warm: engine_run(jobs[:w], loaded.settings, spec.concurrency))
            timed(loop, lambda w=warm: raw_side(w))
            runs: dict[str, list[tuple[float, float]]] = {"probe": [], "raw": []}
            for r in range(ROUNDS):
                sides = [("probe", probe_side), ("raw", raw_side)]
                for name, side in sides if r % 2 == 0 else sides[::-1]:
                    runs[name].append(timed(loop, side))
            probe_rate, probe_cpu = median_rate(spec.n, runs["probe"])
            raw_rate, raw_cpu = median_rate(spec.n, runs["raw"])
            ratio = probe_rate / raw_rate
            # A client busy well under 100 % waited for the server: the rates are the server's.
            busy = (probe_rate * probe_cpu / 1000, raw_rate * raw_cpu / 1000)
            lines.append(f"{kind:<6} {loop_name:<8} probe {probe_rate:7,.0f}/s {probe_cpu:6.3f} ms CPU"
                         f" | raw {raw_rate:7,.0f}/s {raw_cpu:6.3f} ms CPU"
                         f" | probe/raw {ratio:4.2f}x (CPU {probe_cpu / raw_cpu:4.2f}x)"
                         f" | client busy {busy[0]:.0%}/{busy[1]:.0%}")
            RATES[(kind, loop_name)] = (probe_rate, raw_rate)
            goal(f"{kind} probe/raw ({loop_name})",
                 f"{ratio:.2f}x, CPU/check {probe_cpu / raw_cpu:.2f}x", ">= 0.8x", ratio >= 0.8)
    return "\n".join(lines)


RATES: dict[tuple[str, str], tuple[float, float]] = {}


def bench_stun_train(loops: list[str]) -> str:
    """The stun layer's own bookkeeping: 250 Binding requests on one socket, no spacing."""
    from probe import catalog
    from probe.layers import Context
    from probe.layers import stun as stun_layer

    n = 250  # fits the socket buffers on both ends: a lost answer would cost a whole wait
    lines = []
    with Server("stun") as server:
        loaded = catalog.loads(catalog_text([f"stun://127.0.0.1:{server.port}"], attempts=n))
        job = next(loaded.jobs())
        spacing, stun_layer.SPACING_S = stun_layer.SPACING_S, 0.0  # a train as fast as it goes
        try:
            for loop_name in loops:
                loop = loop_factory(loop_name)
                answered: dict[str, list[int]] = {"probe": [], "raw": []}

                async def probe_side(got: list[int] = answered["probe"]) -> None:
                    sample = await stun_layer.measure(job, Context(settings=loaded.settings))
                    got.append(int(sample.phases["stun"].get("answered")))

                async def raw_side(got: list[int] = answered["raw"]) -> None:
                    got.append(await raw.stun_train(server.port, n))

                runs: dict[str, list[tuple[float, float]]] = {"probe": [], "raw": []}
                for r in range(ROUNDS):
                    sides = [("probe", probe_side), ("raw", raw_side)]
                    for name, side in sides if r % 2 == 0 else sides[::-1]:
                        runs[name].append(timed(loop, side))
                probe_rate, probe_cpu = median_rate(n, runs["probe"])
                raw_rate, raw_cpu = median_rate(n, runs["raw"])
                lost = sum(n - a for side in answered.values() for a in side)
                lines.append(
                    f"stun train {loop_name:<8} layer {probe_rate:7,.0f}/s {probe_cpu:6.3f} ms CPU"
                    f" | raw {raw_rate:7,.0f}/s {raw_cpu:6.3f} ms CPU"
                    f" | layer/raw {probe_rate / raw_rate:4.2f}x"
                    + (f"  ({lost} answers lost in socket buffers)" if lost else ""))
        finally:
            stun_layer.SPACING_S = spacing
    return "\n".join(lines)


# --- whole runs --------------------------------------------------------------------------------


def _probe_loop() -> LoopFactory:
    """The loop `probe run` itself picks (probe.session)."""
    from probe.session import loop_factory as chosen

    return chosen() or asyncio.new_event_loop


def bench_silent() -> str:
    """1,000 targets that all drop SYNs, all in flight, timeout 1 s: wall vs one target's own."""
    from probe import catalog
    from probe.runner import Runner

    loop = _probe_loop()
    with Server("silent") as server:
        url = f"tcp://127.0.0.1:{server.port}"
        catalogs = {n: catalog.loads(catalog_text([url] * n, timeout="1s", concurrency=n))
                    for n in (1, 1000)}

        async def whole_run(n: int) -> None:
            runner = Runner(loaded=catalogs[n])
            await runner.run()
            run = runner.finish()
            assert {t.reason for t in run.targets} == {"tcp.timeout"}, run.targets[0]

        async def raw_run(n: int) -> None:
            async def one() -> None:
                import socket

                sock = socket.socket()
                sock.setblocking(False)
                try:
                    async with asyncio.timeout(1):
                        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
                except TimeoutError:
                    pass
                finally:
                    sock.close()

            await raw.bounded(n, n, one)

        walls: dict[tuple[str, int], list[float]] = {}
        for _ in range(ROUNDS):
            for n in (1, 1000):
                walls.setdefault(("probe", n), []).append(timed(loop, lambda k=n: whole_run(k))[0])
                walls.setdefault(("raw", n), []).append(timed(loop, lambda k=n: raw_run(k))[0])
    m = {k: statistics.median(v) for k, v in walls.items()}
    ratio = m["probe", 1000] / m["probe", 1]
    goal("1,000 silent targets vs one", f"{ratio:.2f}x", "<= 1.2x", ratio <= 1.2)
    return (f"silent probe: 1 target {m['probe', 1]:.3f} s, 1,000 targets {m['probe', 1000]:.3f} s"
            f" = {ratio:.2f}x one target's time (whole run: engine and judging)\n"
            f"silent raw:   1 connect {m['raw', 1]:.3f} s, 1,000 connects {m['raw', 1000]:.3f} s"
            f" = {m['raw', 1000] / m['raw', 1]:.2f}x")


def _probe_command() -> list[str]:
    exe = Path(sys.executable).with_name("probe")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "probe"]


# Linux keeps a process's peak RSS across exec, and a child forked from this process starts at
# this process's size (100 MB and more by now): measured directly, every child would weigh at
# least that. So a small Python in between starts the child and reports its wall time and peak.
_MEASURED = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "code = subprocess.call(sys.argv[2:]); t = time.perf_counter() - t; "
             "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
             "open(sys.argv[1], 'w').write(f'{t} {peak}'); sys.exit(code)")


def _child(argv: list[str]) -> tuple[float, float]:
    """(wall s, peak RSS MB) of a child process."""
    with tempfile.NamedTemporaryFile("r") as figures:
        done = subprocess.run([sys.executable, "-c", _MEASURED, figures.name, *argv],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        if done.returncode not in (0, 3):  # 3: inconclusive, no controls in a bench catalog
            raise RuntimeError(f"{argv[:3]} exited {done.returncode}: "
                               f"{done.stderr.decode()[-300:]}")
        wall, peak = figures.read().split()
        return float(wall), int(peak) / 1024


def bench_scale() -> str:
    """`probe run` over 100, 1,000 and 10,000 tcp targets (concurrency 256): wall and peak RSS,
    next to a raw-asyncio process making the same connects."""
    lines = ["targets   probe run: wall s  peak RSS MB   raw asyncio: wall s  peak RSS MB"]
    with Server("tcp") as server, tempfile.TemporaryDirectory() as folder:
        for n in (100, 1000, 10000):
            path = Path(folder) / f"c{n}.yaml"
            path.write_text(catalog_text([f"tcp://127.0.0.1:{server.port}"] * n,
                                         concurrency=256))
            probe, plain = [], []
            for i in range(ROUNDS if n < 10000 else max(1, ROUNDS // 2)):
                out = Path(folder) / f"r{n}-{i}.json"
                probe.append(_child([*_probe_command(), "run", "-c", str(path), "-o", str(out),
                                     "-f", "json"]))
                plain.append(_child([sys.executable, __file__, "--raw-child",
                                     str(n), str(server.port)]))
            pw, pr = (statistics.median(x) for x in zip(*probe, strict=True))
            rw, rr = (statistics.median(x) for x in zip(*plain, strict=True))
            lines.append(f"{n:>7}   {pw:18.2f}  {pr:11.0f}   {rw:20.2f}  {rr:11.0f}")
            if n == 10000:
                goal("peak RSS, 10,000 targets", f"{pr:.0f} MB", "<= 150 MB", pr <= 150)
    return "\n".join(lines)


def _raw_child(n: int, port: int) -> None:
    asyncio.run(raw.tcp(port, "", n, 256))


def bench_first_result() -> str:
    """From `probe run` start to its first JSONL line, 50 tcp targets (process start included)."""
    with Server("tcp") as server, tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.yaml"
        path.write_text(catalog_text([f"tcp://127.0.0.1:{server.port}"] * 50))
        times = []
        for i in range(ROUNDS):
            out = Path(folder) / f"r{i}.jsonl"
            t0 = time.perf_counter()
            process = subprocess.Popen([*_probe_command(), "run", "-c", str(path), "-o", str(out),
                                        "-f", "json"], stdout=subprocess.DEVNULL)
            while not (out.exists() and out.stat().st_size > 0) and process.poll() is None:
                time.sleep(0.002)
            times.append(time.perf_counter() - t0)
            process.wait()
    return f"first result line after {statistics.median(times) * 1000:.0f} ms"


def bench_startup() -> str:
    figures = []
    for args in (["--help"], ["run", "--help"]):
        times = []
        for _ in range(max(7, ROUNDS)):
            t0 = time.perf_counter()
            subprocess.run([*_probe_command(), *args], capture_output=True, check=True)
            times.append(time.perf_counter() - t0)
        figures.append(statistics.median(times))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    bare = time.perf_counter() - t0
    goal("`probe --help`", f"{figures[0] * 1000:.0f} ms", "<= 300 ms", figures[0] <= 0.3)
    return (f"start-up: `probe --help` {figures[0] * 1000:.0f} ms, `probe run --help` "
            f"{figures[1] * 1000:.0f} ms (a bare `python -c pass`: {bare * 1000:.0f} ms)")


def uvloop_summary(loops: list[str]) -> str:
    if "uvloop" not in loops:
        return ("uvloop: standard loop only" if HAS_UVLOOP
                else "uvloop: not installed (pip install probe[fast]), standard loop only")
    parts = []
    for kind in LAYERS:
        if (kind, "asyncio") in RATES and (kind, "uvloop") in RATES:
            on, off = RATES[kind, "uvloop"][0], RATES[kind, "asyncio"][0]
            parts.append(f"{kind} {on / off:.2f}x")
    return "uvloop speeds the probe up: " + (", ".join(parts) or "(no layer section ran)")


SECTIONS: dict[str, Callable[[list[str]], str]] = {
    **{kind: (lambda loops, k=kind: bench_layer(k, loops)) for kind in LAYERS},
    "stun-train": bench_stun_train,
    "silent": lambda loops: bench_silent(),
    "scale": lambda loops: bench_scale(),
    "first": lambda loops: bench_first_result(),
    "startup": lambda loops: bench_startup(),
}


def main(argv: list[str]) -> None:
    if argv[:1] == ["--raw-child"]:
        _raw_child(int(argv[1]), int(argv[2]))
        return
    loops = ["asyncio", "uvloop"] if HAS_UVLOOP else ["asyncio"]
    if "--loop" in argv:
        at = argv.index("--loop")
        loops = [argv[at + 1]]
        del argv[at:at + 2]
    unknown = [a for a in argv if a not in SECTIONS]
    if unknown:
        sys.exit(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,000 sockets in flight
    started = time.perf_counter()
    print(f"probe benchmark: {ROUNDS} rounds (medians), loops {'/'.join(loops)}, loopback, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    for name in argv or list(SECTIONS):
        t0 = time.perf_counter()
        try:
            print(SECTIONS[name](loops), f"  [{time.perf_counter() - t0:.0f} s]", flush=True)
        except Exception as exc:  # noqa: BLE001 - a section that cannot run says so, the rest run
            print(f"{name}: could not run: {type(exc).__name__}: {exc}", flush=True)
    if RATES:
        print(uvloop_summary(loops))
    if GOALS:
        print("\ngoal                                 figure                       target     met")
        for name, figure, target, met in GOALS:
            print(f"{name:<36} {figure:>27}  {target:<9}  {'yes' if met else 'NO'}")
    print(f"\nwhole benchmark: {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
