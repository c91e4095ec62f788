"""Benchmark: STUN transactions per second through the stun layer vs a minimal raw asyncio client.

Both send the same train of Binding requests (fresh transaction id each, no spacing) to the same
mock server in this process and wait for every answer; a transaction is one answered request.
The raw client packs a bare header and matches answers by the 12 id bytes without decoding
them, so the ratio is what the layer's bookkeeping (codec, timestamps, facts) costs.
Usage: python bench/bench_stun.py [requests per run] [runs]
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import struct
import sys
import time
from typing import Any

from probe import catalog
from probe.layers import Context
from probe.layers import stun as stun_layer
from probe.mock.stun import StunServer


class _RawClient(asyncio.DatagramProtocol):
    def __init__(self, count: int) -> None:
        self.pending: set[bytes] = set()
        self.answered = 0
        self.count = count
        self.done = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        tid = data[8:20]
        if tid in self.pending:
            self.pending.discard(tid)
            self.answered += 1
            if self.answered == self.count and not self.done.done():
                self.done.set_result(None)


async def raw_run(port: int, count: int, timeout: float) -> tuple[int, float]:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    transport, client = await loop.create_datagram_endpoint(
        lambda: _RawClient(count), remote_addr=("127.0.0.1", port))
    try:
        for _ in range(count):
            tid = os.urandom(12)
            client.pending.add(tid)
            transport.sendto(struct.pack("!HHI12s", 0x0001, 0, 0x2112A442, tid))
            await asyncio.sleep(0)  # as the layer yields between requests
        try:
            await asyncio.wait_for(client.done, timeout)
        except TimeoutError:
            pass
    finally:
        transport.close()
    return client.answered, time.perf_counter() - start


async def layer_run(port: int, count: int, timeout: float) -> tuple[int, float]:
    document = {"version": 1, "settings": {"timeout": timeout, "attempts": count},
                "platforms": {"bench": {"features": {"stun": [f"stun://127.0.0.1:{port}"]}}}}
    loaded = catalog.loads(json.dumps(document))
    job = next(loaded.jobs())
    start = time.perf_counter()
    sample = await stun_layer.measure(job, Context(settings=loaded.settings))
    took = time.perf_counter() - start
    return int(sample.phases["stun"].get("answered")), took


async def main(count: int, runs: int) -> None:
    stun_layer.SPACING_S = 0.0  # a train as fast as the loop goes, for both clients
    server = StunServer("ok")
    await server.start()
    rates: dict[str, list[float]] = {"layer": [], "raw": []}
    try:
        for _ in range(runs):
            for name, go in (("raw", raw_run), ("layer", layer_run)):
                answered, took = await go(server.port, count, 2.0)
                rates[name].append(answered / took)
                if answered < count:
                    print(f"  {name}: {count - answered} of {count} unanswered (socket buffers)")
    finally:
        await server.stop()
    layer, raw = statistics.median(rates["layer"]), statistics.median(rates["raw"])
    print(f"STUN transactions/s over loopback, {count} requests x {runs} runs (median):")
    print(f"  raw asyncio client  {raw:10,.0f}/s")
    print(f"  probe stun layer    {layer:10,.0f}/s")
    print(f"  layer / raw         {layer / raw:10.2f}")


if __name__ == "__main__":
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    started = time.perf_counter()
    asyncio.run(main(requests, repeats))
    print(f"  ({time.perf_counter() - started:.1f} s in all)")
