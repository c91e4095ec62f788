"""Wall time of 200 targets that all drop SYNs, at concurrency 64, timeout 1 s, 1 attempt.

    python bench/bench_silent.py [targets] [concurrency]

One loopback listener with a full accept queue drops every SYN (probe.mock.tcp "silent"), so
every target costs one whole timeout. Serially that is 200 s; with 64 in flight the floor is
ceil(200 / 64) = 4 timeouts, 4 s. Goal: under 6 s. Prints figures, asserts nothing.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time

from probe import catalog
from probe.mock.tcp import TCPServer
from probe.runner import Runner


async def main(count: int, concurrency: int) -> None:
    async with TCPServer("silent") as server:
        targets = [{"url": f"tcp://127.0.0.1:{server.port}", "name": f"t{i}"}
                   for i in range(count)]
        document = {"settings": {"timeout": "1s", "attempts": 1, "concurrency": concurrency},
                    "platforms": {"bench": {"features": {"silent": targets}}}}
        runner = Runner(loaded=catalog.loads(json.dumps(document)))
        start = time.perf_counter()
        await runner.run()
        wall = time.perf_counter() - start
    run = runner.finish()
    reasons = sorted({t.reason for t in run.targets})
    floor = math.ceil(count / concurrency)
    print(f"{count} silent targets, concurrency {concurrency}, timeout 1 s, 1 attempt: "
          f"{wall:.2f} s wall (floor {floor} s, serial {count} s, goal < 6 s); "
          f"reasons {reasons}")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    asyncio.run(main(*(args + [200, 64][len(args):])))
