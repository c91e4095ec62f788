"""QUIC handshakes per second: the probe's quic layer next to a minimal raw aioquic client.

    python bench/bench_quic.py [handshakes per round] [rounds]

The mock QUIC server runs in its own process on loopback, so each figure is the client's cost.
Both clients do the same work in the same run against the same server: a full handshake (ALPN
h3, certificate verified against the test CA), then CONNECTION_CLOSE, 16 in flight at a time.
The probe's layer also trusts the system store, as it does in real runs. Figures are medians of
the rounds, printed, never asserted.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import HandshakeCompleted

NAME = "bench.test"
IN_FLIGHT = 16


def _serve(ca_dir: str, ready: Any) -> None:
    async def main() -> None:
        from probe.mock.certs import TestCA
        from probe.mock.quic import QuicServer

        ca = TestCA()
        ca.write_ca(Path(ca_dir) / "ca.pem")
        server = QuicServer("ok", ca=ca, name=NAME)
        await server.start()
        ready.put(server.port)
        await asyncio.Event().wait()

    asyncio.run(main())


class _RawClient(asyncio.DatagramProtocol):
    """The least a client can do: feed the core, send what it says, stop at HandshakeCompleted."""

    def __init__(self, configuration: QuicConfiguration, remote: tuple[str, int]) -> None:
        self.connection = QuicConnection(configuration=configuration)
        self.remote = remote
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.transport: Any = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.connection.connect(self.remote, now=self.loop.time())
        self.pump()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.connection.receive_datagram(data, self.remote, now=self.loop.time())
        self.pump()

    def on_timer(self) -> None:
        self.connection.handle_timer(now=self.loop.time())
        self.pump()

    def pump(self) -> None:
        while (event := self.connection.next_event()) is not None:
            if isinstance(event, HandshakeCompleted) and not self.done.done():
                self.connection.close()
                self.done.set_result(None)
        for data, _ in self.connection.datagrams_to_send(now=self.loop.time()):
            self.transport.sendto(data)
        if self.timer is not None:
            self.timer.cancel()
        timer_at = self.connection.get_timer()
        self.timer = None if timer_at is None else self.loop.call_at(timer_at, self.on_timer)


async def raw_handshake(port: int, ca_pem: bytes) -> None:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name=NAME,
                                      cadata=ca_pem)
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(
        lambda: _RawClient(configuration, ("127.0.0.1", port)), remote_addr=("127.0.0.1", port))
    try:
        async with asyncio.timeout(5):
            await client.done
    finally:
        if client.timer is not None:
            client.timer.cancel()
        transport.close()


async def rate(n: int, one: Callable[[], Awaitable[None]]) -> float:
    """Handshakes per second for n handshakes, IN_FLIGHT at a time."""
    semaphore = asyncio.Semaphore(IN_FLIGHT)

    async def bounded() -> None:
        async with semaphore:
            await one()

    start = time.perf_counter()
    await asyncio.gather(*(bounded() for _ in range(n)))
    return n / (time.perf_counter() - start)


async def bench(port: int, ca_file: str, n: int, rounds: int) -> tuple[list[float], list[float]]:
    from probe import catalog
    from probe.layers import Context
    from probe.layers import quic as layer

    loaded = catalog.loads(f"""
version: 1
settings: {{timeout: 5s, attempts: 1, ca_file: "{ca_file}"}}
platforms:
  bench:
    features:
      quic: [{{url: "quic://{NAME}:{port}", address: 127.0.0.1}}]
""")
    job = next(loaded.jobs())
    ctx = Context(settings=loaded.settings)
    ca_pem = Path(ca_file).read_bytes()

    async def probe_one() -> None:
        sample = await layer.measure(job, ctx)
        assert sample.ok, sample

    async def raw_one() -> None:
        await raw_handshake(port, ca_pem)

    await rate(IN_FLIGHT, probe_one)  # warm up both: imports, trust store lookups
    await rate(IN_FLIGHT, raw_one)
    probe_rates, raw_rates = [], []
    for _ in range(rounds):  # interleaved, so drift on a shared machine hits both alike
        probe_rates.append(await rate(n, probe_one))
        raw_rates.append(await rate(n, raw_one))
    await ctx.aclose()
    return probe_rates, raw_rates


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    with tempfile.TemporaryDirectory(prefix="probe-bench-quic-") as ca_dir:
        ready: Any = multiprocessing.Queue()
        server = multiprocessing.Process(target=_serve, args=(ca_dir, ready), daemon=True)
        server.start()
        try:
            port = ready.get(timeout=30)
            probe_rates, raw_rates = asyncio.run(
                bench(port, str(Path(ca_dir) / "ca.pem"), n, rounds))
        finally:
            server.kill()
            server.join()
    probe_rate, raw_rate = statistics.median(probe_rates), statistics.median(raw_rates)
    print(f"quic handshakes/s ({n} per round, {rounds} rounds, {IN_FLIGHT} in flight, medians)")
    print(f"  probe layer : {probe_rate:7.1f}   rounds: {', '.join(f'{r:.0f}' for r in probe_rates)}")
    print(f"  raw aioquic : {raw_rate:7.1f}   rounds: {', '.join(f'{r:.0f}' for r in raw_rates)}")
    print(f"  ratio probe/raw: {probe_rate / raw_rate:.2f}")


if __name__ == "__main__":
    main()
