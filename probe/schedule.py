"""Repeated runs: a catalog run N times or until stopped, one run every interval.

Runs never overlap: the next one starts `every` seconds after the previous one started, or at
once when a run took longer than that. SIGINT and SIGTERM stop the loop cleanly: while sleeping,
it ends at once; during a run, the run is cancelled and what it finished so far is judged and
handed on with `interrupted: true` (the same promise as `probe run`, CONTRACT.md §2), so a
history never silently loses the targets that were measured. A run is handed on only whole:
`on_run` gets the finished `Run`, and the history store writes it in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from probe.catalog import LoadedCatalog
from probe.results import Run
from probe.runner import Runner

OnRun = Callable[[Run], Awaitable[None]]

_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_interval(text: str) -> float:
    """'90s', '5m', '1h', '1d' or a bare number of seconds -> seconds (> 0)."""
    m = _INTERVAL.match(text)
    if not m:
        raise ValueError(f"bad interval {text!r} (use e.g. 30s, 5m, 1h)")
    seconds = float(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m[2] or "s"]
    if seconds <= 0:
        raise ValueError(f"interval must be positive, got {text!r}")
    return seconds


@dataclass
class Stopper:
    """Turns SIGINT/SIGTERM into a stop request: wakes the sleep, cancels the run in flight."""

    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    signum: int | None = None
    current: asyncio.Task[Any] | None = None

    def stop(self, signum: int | None = None) -> None:
        if self.signum is None:
            self.signum = signum
        self.stopped.set()
        if self.current is not None:
            self.current.cancel()

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, self.stop, signum)

    def remove(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)

    async def sleep(self, seconds: float) -> None:
        """Sleep, or return early when stopped."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopped.wait(), seconds)


async def run_one(loaded: LoadedCatalog, stopper: Stopper, **runner: Any) -> Run:
    """One run that a stop request cancels; returns what it finished (interrupted or not)."""
    r = Runner(loaded=loaded, **runner)
    task = stopper.current = asyncio.create_task(r.run())
    try:
        await task
    except asyncio.CancelledError:
        me = asyncio.current_task()
        if me is not None and me.cancelling():  # we were cancelled, not just the run: go on up
            raise
    finally:
        stopper.current = None
    if task.cancelled():
        r.interrupted = True  # also when cancelled before it began: it did not run whole
    return r.finish()


async def repeat(
    loaded: LoadedCatalog,
    on_run: OnRun,
    *,
    every: float,
    count: int | None = None,
    stopper: Stopper | None = None,
    **runner: Any,
) -> int:
    """Run `count` times (None: until stopped), `every` seconds apart; returns runs done."""
    stopper = stopper or Stopper()
    loop = asyncio.get_running_loop()
    done = 0
    while (count is None or done < count) and not stopper.stopped.is_set():
        started = loop.time()
        run = await run_one(loaded, stopper, **runner)
        done += 1
        await on_run(run)  # a stop request cancels only the run in flight, never this
        if count is not None and done >= count:
            break
        await stopper.sleep(started + every - loop.time())
    return done


def run_repeatedly(
    loaded: LoadedCatalog,
    on_run: OnRun,
    *,
    every: float,
    count: int | None = None,
    **runner: Any,
) -> tuple[int, int | None]:
    """`repeat` under its own event loop with signal handling: (runs done, stopping signal)."""

    async def main() -> tuple[int, int | None]:
        stopper = Stopper()
        stopper.install()
        try:
            done = await repeat(loaded, on_run, every=every, count=count, stopper=stopper,
                                **runner)
        finally:
            stopper.remove()
        return done, stopper.signum

    return asyncio.run(main())
