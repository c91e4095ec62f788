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

from probe import loop
from probe.catalog import LoadedCatalog
from probe.errors import HistoryError
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

    return loop.run(main())


# --- what `probe watch` and `probe run --repeat` do around the loop ------------------------

Report = Callable[[Run, int | None, Run | None], None]  # run, its history id, the one before


def _key(t: Any) -> tuple[str | None, str | None, str, str | None]:
    return t.platform, t.feature, t.url, t.name


def _verdict(status: str, reason: str) -> str:
    return status if status == "ok" else f"{status} {reason}"


def changes(run: Run, previous: Run | None) -> list[str]:
    """A line per target whose verdict differs from the previous run (the first run: every
    target that is not ok), controls included."""
    before = {} if previous is None else {
        _key(t): t for t in [*previous.network.controls, *previous.targets]}
    lines = []
    for t in [*run.network.controls, *run.targets]:
        where = "control" if t.platform is None else f"{t.platform}/{t.feature}"
        label = f"{where} {t.name or t.url}"
        old = before.get(_key(t))
        if previous is None:
            if t.status != "ok":
                lines.append(f"{label}: {_verdict(t.status, t.reason)}")
        elif old is None:
            lines.append(f"{label}: new, {_verdict(t.status, t.reason)}")
        elif (old.status, old.reason) != (t.status, t.reason):
            lines.append(f"{label}: {_verdict(old.status, old.reason)} → "
                         f"{_verdict(t.status, t.reason)}")
    return lines


def summary(run: Run, run_id: int | None) -> str:
    """One line for a finished run: when, how many targets in each status, how long."""
    counts = {s: sum(1 for t in run.targets if t.status == s)
              for s in ("ok", "degraded", "blocked", "inconclusive")}
    shown = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no targets"
    ident = f"run {run_id}" if run_id is not None else "run (not recorded)"
    extra = " (interrupted)" if run.interrupted else ""
    if run.network.status != "ok":
        extra += f" network {run.network.reason}"
    return f"{run.started_at[:19].replace('T', ' ')} {ident}: {shown}{extra}"


def watch(
    loaded: LoadedCatalog,
    *,
    db: str,
    every: float,
    count: int | None,
    report: Report,
    warn: Callable[[str], None],
    **runner: Any,
) -> tuple[Run | None, int | None]:
    """Run repeatedly, appending each run to the history at `db`; (last run, stopping signal).

    A run that cannot be recorded (the store stayed busy) is reported through `warn` and the
    loop goes on: a watcher that stopped for a locked file would lose every run after it.
    """
    from probe import history

    history.connect(db).close()  # an unusable store fails here, before the first run
    last: list[Run] = []

    async def on_run(run: Run) -> None:
        run_id: int | None = None
        try:
            run_id = await asyncio.to_thread(history.record_to, db, run)
        except HistoryError as exc:
            warn(f"run not recorded: {exc}")
        report(run, run_id, last[-1] if last else None)
        last.append(run)
        del last[:-1]

    _, signum = run_repeatedly(loaded, on_run, every=every, count=count, **runner)
    return (last[-1] if last else None), signum
