"""One run as the command line drives it: signals, progress on stderr, result files.

SIGINT and SIGTERM cancel the run; everything finished so far is judged and written (the JSONL
file already holds a line per finished target, each flushed as it came), and the caller exits
130 or 143.
The event loop is started by probe/loop.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NoReturn

from probe import loop
from probe.catalog import LoadedCatalog, parse_duration
from probe.report import jsonl_line
from probe.results import Run, TargetResult, write_atomic
from probe.runner import Runner


def override_settings(
    loaded: LoadedCatalog,
    *,
    timeout: str | None,
    attempts: int | None,
    concurrency: int | None,
    fail: Callable[[str], NoReturn],
) -> LoadedCatalog:
    """The catalog with command-line settings laid over its own."""
    update: dict[str, Any] = {}
    if timeout is not None:
        try:
            update["timeout"] = parse_duration(timeout)
        except ValueError as exc:
            fail(f"--timeout: {exc}")
    if attempts is not None:
        update["attempts"] = attempts
    if concurrency is not None:
        update["concurrency"] = concurrency
    if not update:
        return loaded
    settings = loaded.catalog.settings.model_copy(update=update)
    catalog = loaded.catalog.model_copy(update={"settings": settings})
    # Targets keep their own timeout/attempts when they set one; the rest follow the override.
    return type(loaded)(**{**loaded.__dict__, "catalog": catalog})


def usable_concurrency(wanted: int) -> tuple[int, str | None]:
    """Cap concurrency below the open-file limit, so a big run never dies of EMFILE."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < hard:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
    except ImportError:  # not on POSIX
        return wanted, None
    # Each target in flight may hold a few sockets (DoH, a diagnosis handshake): keep headroom.
    cap = max(1, (soft - 64) // 4) if soft != resource.RLIM_INFINITY else wanted
    if wanted > cap:
        return cap, f"concurrency capped at {cap} by the open-file limit ({soft})"
    return wanted, None


class Progress:
    """A live progress line on stderr, only when stderr is a terminal."""

    def __init__(self, total: int) -> None:
        self.enabled = sys.stderr.isatty()
        self.total = total
        self._rich: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=Console(file=sys.stderr), transient=True,
            )
            self._rich.__enter__()
            self._task = self._rich.add_task("probing", total=self.total)
        return self

    def advance(self, label: str) -> None:
        if self._rich is not None:
            self._rich.update(self._task, advance=1, description=label[:40])

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.__exit__(None, None, None)


@contextlib.contextmanager
def jsonl_writer(path: Path | None) -> Iterator[IO[str] | None]:
    if path is None or path.suffix != ".jsonl":
        yield None
        return
    with path.open("w", encoding="utf-8") as f:
        yield f


def run_once(
    loaded: LoadedCatalog,
    *,
    only: set[str] | None = None,
    baseline: Run | None = None,
    baseline_path: str | None = None,
    output: Path | None = None,
    include_ip: bool = False,
    quiet: bool = False,
) -> tuple[Run, int | None]:
    """Run the catalog once; returns the judged run and the signal that stopped it, if any."""
    concurrency, note = usable_concurrency(loaded.settings.concurrency)
    if note and not quiet:
        sys.stderr.write(f"probe: note: {note}\n")
    with jsonl_writer(output) as stream:

        def on_target(result: TargetResult) -> None:
            if stream is not None:
                stream.write(jsonl_line(result) + "\n")
                stream.flush()

        runner = Runner(loaded=loaded, only=only, include_ip=include_ip, baseline=baseline,
                        baseline_path=baseline_path, on_target=on_target,
                        concurrency=concurrency)
        progress = Progress(len(runner.jobs)) if not quiet else None
        signum = loop.run(_run_with_signals(runner, progress))
        result = runner.finish()
    if output is not None and output.suffix != ".jsonl":
        write_atomic(output, result.to_json())
    return result, signum


async def _run_with_signals(runner: Runner, progress: Progress | None) -> int | None:
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(runner.run())
    received: list[int] = []

    def stop(signum: int) -> None:
        received.append(signum)
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop, signum)
    done_before = 0

    def tick() -> None:
        nonlocal done_before
        if progress is not None and len(runner.done) > done_before:
            for job, _ in runner.done[done_before:]:
                progress.advance(job.target.name or job.target.url)
            done_before = len(runner.done)

    try:
        with progress or contextlib.nullcontext():
            while progress is not None and progress.enabled and not task.done():
                await asyncio.wait({task}, timeout=0.1)
                tick()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
    return received[0] if received else None
