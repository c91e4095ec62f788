"""The one place that starts an event loop: asyncio's own, or uvloop's with PROBE_LOOP=uvloop.

uvloop does not pay enough to be the default: the layers drive their own sockets
(loop.sock_connect/sock_recv, and add_reader for UDP in layers/udp.py), which uvloop runs little
faster, so bench/run.py measures the probe on uvloop at 0.8x to 1.6x of its speed on asyncio's
loop depending on layer and run, and the tests and the lab run on asyncio's. Every command that
runs the network (run, watch, serve, demo, mock, reflect) starts its loop here, so PROBE_LOOP
applies to each.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory() -> LoopFactory | None:
    """uvloop's loop factory when asked for (PROBE_LOOP=uvloop) and importable; None: asyncio's."""
    if os.environ.get("PROBE_LOOP", "").lower() != "uvloop":
        return None
    try:
        uvloop = importlib.import_module("uvloop")  # an optional extra: no import at the top
    except ImportError:
        return None
    return cast(LoopFactory, uvloop.new_event_loop)


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on the chosen loop (3.11 has asyncio.Runner, not asyncio.run's loop_factory)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


def new_loop() -> asyncio.AbstractEventLoop:
    """A fresh loop of the chosen kind, for a thread of its own (the demo's mock world)."""
    factory = loop_factory()
    return factory() if factory is not None else asyncio.new_event_loop()
