"""The benchmark: the probe's engine next to a minimal raw-asyncio client, per layer, same run.

    python bench/run.py            # everything, about 2-4 minutes on 2 cores
    python bench/run.py tcp tls    # some sections only

Servers run in a separate process on loopback, so CPU per check is the client's alone. Each
figure is the median of several rounds. Figures are printed, never asserted.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONCURRENCY = 32

# --- servers, in their own process ----------------------------------------------------------


def _serve(kind: str, ca_dir: str, ready: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    asyncio.run(_serve_async(kind, ca_dir, ready))


async def _serve_async(kind: str, ca_dir: str, ready: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    from probe.mock.certs import TestCA

    if kind == "tcp":
        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                await r.read(1)
            except OSError:
                pass
            w.close()

        server = await asyncio.start_server(on_conn, "127.0.0.1", 0, backlog=1024)
        ready.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()
    ca = TestCA()
    (Path(ca_dir) / "ca.pem").write_bytes(ca.cert_pem)
    cert, key = ca.issue("bench.test", "127.0.0.1").write(Path(ca_dir), "leaf")
    if kind == "tls":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)

        async def on_tls(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                await r.read(1)
            except (OSError, ssl.SSLError):
                pass
            w.close()

        server = await asyncio.start_server(on_tls, "127.0.0.1", 0, ssl=context, backlog=1024)
        ready.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()
    if kind == "https":
        from probe.mock.tls import HttpsServer

        https = HttpsServer("ok", ca=ca, name="bench.test")
        await https.start()
        ready.put(https.port)
        await asyncio.Event().wait()
    if kind == "stun":
        from probe.mock.stun import StunServer

        stun = StunServer("ok")
        await stun.start()
        ready.put(stun.port)
        await asyncio.Event().wait()
    if kind == "quic":
        from probe.mock.quic import QuicServer

        quic = QuicServer("ok", ca=ca, name="bench.test")
        await quic.start()
        ready.put(quic.port)
        await asyncio.Event().wait()


class Server:
    def __init__(self, kind: str) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="probe-bench-")
        queue: multiprocessing.Queue[int] = multiprocessing.Queue()
        self.process = multiprocessing.Process(target=_serve, args=(kind, self.dir.name, queue),
                                               daemon=True)
        self.process.start()
        self.port = queue.get(timeout=30)
        self.ca_file = str(Path(self.dir.name) / "ca.pem")

    def close(self) -> None:
        self.process.kill()
        self.process.join()
        self.dir.cleanup()


# --- measuring --------------------------------------------------------------------------------


async def _bounded(n: int, one: Callable[[], Awaitable[object]]) -> None:
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def guarded() -> None:
        async with semaphore:
            await one()

    await asyncio.gather(*(guarded() for _ in range(n)))


def measure(n: int, make: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """(checks per second, client CPU ms per check), median over ROUNDS."""
    rates, cpus = [], []
    for _ in range(ROUNDS):
        cpu0, t0 = time.process_time(), time.perf_counter()
        asyncio.run(make())
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        rates.append(n / wall)
        cpus.append(cpu * 1000 / n)
    return statistics.median(rates), statistics.median(cpus)


def catalog_text(urls: list[str], *, timeout: str = "5s", extra: str = "", attempts: int = 1,
                 concurrency: int = CONCURRENCY) -> str:
    lines = [
        "version: 1",
        f"settings: {{timeout: {timeout}, attempts: {attempts}, concurrency: {concurrency}{extra}}}",
        "platforms:", "  bench:", "    features:", "      f:",
    ]
    lines += [f"        - {u}" for u in urls]
    return "\n".join(lines) + "\n"


async def probe_engine(text: str) -> int:
    """Run a catalog through the engine and layers (no judging, no output); returns ok count."""
    from probe import catalog, engine
    from probe.layers import Context

    loaded = catalog.loads(text)
    ctx = Context(settings=loaded.settings)
    ok = 0

    def done(job: object, observation: object) -> None:
        nonlocal ok
        ok += all(s.ok for s in observation.samples)  # type: ignore[attr-defined]

    try:
        await engine.run(loaded.jobs(), ctx, concurrency=loaded.settings.concurrency, on_done=done)
    finally:
        await ctx.aclose()
    return ok


def row(label: str, probe: tuple[float, float], raw: tuple[float, float]) -> str:
    return (f"{label:<6} probe {probe[0]:8.0f}/s {probe[1]:6.3f} ms CPU   "
            f"raw {raw[0]:8.0f}/s {raw[1]:6.3f} ms CPU   ratio {probe[0] / raw[0]:.2f}x")


def bench_tcp() -> str:
    server, n = Server("tcp"), 2000
    try:
        async def raw_one() -> None:
            _, w = await asyncio.open_connection("127.0.0.1", server.port)
            w.close()

        async def raw() -> None:
            await _bounded(n, raw_one)

        text = catalog_text([f"tcp://127.0.0.1:{server.port}"] * n)

        async def engine_run() -> None:
            assert await probe_engine(text) == n

        return row("tcp", measure(n, engine_run), measure(n, raw))
    finally:
        server.close()


def bench_tls() -> str:
    server, n = Server("tls"), 600
    try:
        context = ssl.create_default_context(cafile=server.ca_file)

        async def raw_one() -> None:
            _, w = await asyncio.open_connection("127.0.0.1", server.port, ssl=context,
                                                 server_hostname="bench.test")
            w.close()

        async def raw() -> None:
            await _bounded(n, raw_one)

        text = catalog_text(
            [f"{{url: 'tls://bench.test:{server.port}', address: 127.0.0.1}}"] * n,
            extra=f", ca_file: {server.ca_file}")

        async def engine_run() -> None:
            assert await probe_engine(text) == n

        return row("tls", measure(n, engine_run), measure(n, raw))
    finally:
        server.close()


def bench_https() -> str:
    server, n = Server("https"), 300
    try:
        import httpx

        async def raw() -> None:
            # A minimal client: a fresh connection per check, as the probe makes one per sample.
            context = ssl.create_default_context(cafile=server.ca_file)

            async def one() -> None:
                async with httpx.AsyncClient(verify=context) as client:
                    r = await client.get(f"https://127.0.0.1:{server.port}/",
                                         headers={"Host": "bench.test"},
                                         extensions={"sni_hostname": "bench.test"})
                    r.raise_for_status()

            await _bounded(n, one)

        text = catalog_text(
            [f"{{url: 'https://bench.test:{server.port}/', address: 127.0.0.1}}"] * n,
            extra=f", ca_file: {server.ca_file}")

        async def engine_run() -> None:
            assert await probe_engine(text) == n

        return row("https", measure(n, engine_run), measure(n, raw))
    finally:
        server.close()


def bench_stun() -> str:
    server, n = Server("stun"), 3000
    try:
        from probe.wire import stun as codec

        async def raw() -> None:
            loop = asyncio.get_running_loop()

            class Client(asyncio.DatagramProtocol):
                def __init__(self) -> None:
                    self.answer: asyncio.Future[bytes] = loop.create_future()

                def datagram_received(self, data: bytes, addr: object) -> None:
                    if not self.answer.done():
                        self.answer.set_result(data)

            async def one() -> None:
                transport, client = await loop.create_datagram_endpoint(
                    Client, remote_addr=("127.0.0.1", server.port))
                try:
                    request = codec.binding_request()
                    transport.sendto(codec.encode(request))
                    async with asyncio.timeout(2):
                        codec.decode(await client.answer)
                finally:
                    transport.close()

            await _bounded(n, one)

        text = catalog_text([f"stun://127.0.0.1:{server.port}"] * n)

        async def engine_run() -> None:
            assert await probe_engine(text) == n

        return row("stun", measure(n, engine_run), measure(n, raw))
    finally:
        server.close()


def bench_quic() -> str:
    server, n = Server("quic"), 150
    try:
        from aioquic.asyncio import connect
        from aioquic.quic.configuration import QuicConfiguration

        async def raw() -> None:
            async def one() -> None:
                config = QuicConfiguration(is_client=True, alpn_protocols=["h3"],
                                           server_name="bench.test")
                config.load_verify_locations(server.ca_file)
                async with connect("127.0.0.1", server.port, configuration=config,
                                   wait_connected=True) as client:
                    client.close()

            await _bounded(n, one)

        text = catalog_text(
            [f"{{url: 'quic://bench.test:{server.port}', address: 127.0.0.1}}"] * n,
            extra=f", ca_file: {server.ca_file}")

        async def engine_run() -> None:
            assert await probe_engine(text) == n

        return row("quic", measure(n, engine_run), measure(n, raw))
    finally:
        server.close()


# --- whole-run figures ----------------------------------------------------------------------


def silent_listener() -> tuple[object, int]:
    from probe.mock.tcp import silent_socket

    sock = silent_socket()
    return sock, sock.getsockname()[1]


def bench_silent() -> str:
    """1,000 targets that all drop SYNs, concurrency 1,000: wall time vs one target's own."""
    holder, port = silent_listener()
    try:
        def run(n: int) -> float:
            text = catalog_text([f"tcp://127.0.0.1:{port}"] * n, timeout="1s", concurrency=n)
            t0 = time.perf_counter()
            ok = asyncio.run(probe_engine(text))
            assert ok == 0
            return time.perf_counter() - t0

        one = statistics.median(run(1) for _ in range(ROUNDS))
        many = statistics.median(run(1000) for _ in range(ROUNDS))
        return (f"silent 1 target {one:.2f} s, 1,000 targets {many:.2f} s "
                f"({many / one:.2f}x one target's time; goal <= 1.2x)")
    finally:
        holder.close()  # type: ignore[attr-defined]


def _rss_child(n: int, port: int) -> None:
    text = catalog_text([f"tcp://127.0.0.1:{port}"] * n, timeout="2s", concurrency=256)
    from probe import catalog
    from probe.runner import Runner

    runner = Runner(loaded=catalog.loads(text))
    t0 = time.perf_counter()
    asyncio.run(runner.run())
    run = runner.finish()
    wall = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{n} {wall:.2f} {rss_mb:.1f} {len(run.targets)}", flush=True)


def bench_scale() -> str:
    """Wall time and peak RSS of whole runs (engine + judging) of 100, 1,000 and 10,000 targets."""
    server = Server("tcp")
    lines = ["targets    wall s   peak RSS MB"]
    try:
        for n in (100, 1000, 10000):
            out = subprocess.run(
                [sys.executable, __file__, "--rss-child", str(n), str(server.port)],
                capture_output=True, text=True, check=True).stdout.split()
            lines.append(f"{int(out[0]):>7}  {float(out[1]):7.2f}   {float(out[2]):8.1f}")
    finally:
        server.close()
    return "\n".join(lines)


def bench_first_result() -> str:
    """Time from `probe run` start to the first JSONL line, on a loopback catalog."""
    server = Server("tcp")
    with tempfile.TemporaryDirectory() as folder:
        cat = Path(folder) / "c.yaml"
        cat.write_text(catalog_text([f"tcp://127.0.0.1:{server.port}"] * 50))
        times = []
        for i in range(ROUNDS):
            out = Path(folder) / f"r{i}.jsonl"
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "probe", "run", "-c", str(cat),
                                     "-o", str(out), "-f", "json"], stdout=subprocess.DEVNULL)
            while not (out.exists() and out.stat().st_size > 0):
                time.sleep(0.002)
            times.append(time.perf_counter() - t0)
            proc.wait()
        server.close()
    return f"first result after {statistics.median(times) * 1000:.0f} ms (process start included)"


def bench_startup() -> str:
    exe = Path(sys.executable).with_name("probe")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "probe"]
    times = []
    for _ in range(max(5, ROUNDS)):
        t0 = time.perf_counter()
        subprocess.run([*cmd, "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return f"`probe --help` {statistics.median(times) * 1000:.0f} ms (goal <= 300 ms)"


SECTIONS: dict[str, Callable[[], str]] = {
    "tcp": bench_tcp, "tls": bench_tls, "https": bench_https, "stun": bench_stun,
    "quic": bench_quic, "silent": bench_silent, "scale": bench_scale,
    "first": bench_first_result, "startup": bench_startup,
}


def main(argv: list[str]) -> None:
    if argv[:1] == ["--rss-child"]:
        _rss_child(int(argv[1]), int(argv[2]))
        return
    chosen = argv or list(SECTIONS)
    print(f"probe benchmark: {ROUNDS} rounds, medians, concurrency {CONCURRENCY}, loopback")
    for name in chosen:
        t0 = time.perf_counter()
        try:
            print(SECTIONS[name](), f"   [{time.perf_counter() - t0:.0f} s]", flush=True)
        except Exception as exc:  # a section that cannot run says so; the others still run
            print(f"{name}: could not run: {type(exc).__name__}: {exc}", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main(sys.argv[1:])
