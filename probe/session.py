"""One run as the command line drives it: the output file, signals, progress on stderr.

The output file (`-o`) is checked before the first packet is sent: its format (from `-f`, else
its extension), its folder, that it may be written. JSONL gets a line per record as the run
goes (probe/results.py: a run record, a line per target as it finishes, then the network,
features, platforms and an end record); the other formats are written whole at the end. A file
that cannot be written loses nothing else: the run is reported on stdout and the caller exits
with EXIT_OUTPUT. SIGINT and SIGTERM cancel the run; everything finished so far is judged and
written, a signal during the judging and writing included, and the caller exits 130 or 143.
The event loop is started by probe/loop.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Self

from probe import loop
from probe.catalog import LoadedCatalog
from probe.errors import UsageError
from probe.report import render
from probe.results import JsonlWriter, Run, jsonl_head, jsonl_tail, jsonl_target, write_atomic
from probe.runner import Runner


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

    def __enter__(self) -> Self:
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


# --- the output file ------------------------------------------------------------------------

EXTENSIONS = {".json": "json", ".jsonl": "jsonl", ".csv": "csv", ".md": "markdown",
              ".markdown": "markdown"}


@dataclass(frozen=True)
class Output:
    """Where `-o` writes, and in which format."""

    path: Path
    fmt: str


def plan_output(path: Path, fmt: str, force: bool) -> Output:
    """The output `-o PATH` asks for, checked before any packet is sent; raises UsageError.

    The format is `-f`'s (a table is for terminals: then the extension's); an extension that
    names another format is refused rather than written in the wrong one."""
    by_extension = EXTENSIONS.get(path.suffix.lower())
    if fmt != "table":
        if by_extension is not None and by_extension != fmt:
            raise UsageError(f"-o {path}: the extension says {by_extension}, -f says {fmt}; "
                             f"make them agree")
        chosen = fmt
    elif by_extension is None:
        raise UsageError(f"-o {path}: cannot tell the format from the extension: use .json, "
                         f".jsonl, .csv or .md, or give -f")
    else:
        chosen = by_extension
    if path.is_dir():
        raise UsageError(f"-o {path}: that is a folder; give a file name")
    if path.exists() and not force:
        raise UsageError(f"{path} exists; pass --force to overwrite it")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"-o {path}: there is no folder {folder}")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass  # the only honest test of "may I write here": a read-only mount, a full disk
    except OSError as exc:
        raise UsageError(f"-o {path}: cannot write in {folder}: {exc.strerror or exc}") from None
    return Output(path, chosen)


@dataclass
class Outcome:
    """A finished run: the run, the signal that stopped it (if any), and why its output file
    could not be written (if so)."""

    run: Run
    signum: int | None = None
    output_error: str | None = None
    written: str | None = None  # the output file's text, when it was rendered whole


@contextlib.contextmanager
def signals_noted(noted: list[int]) -> Iterator[None]:
    """While judging and writing, a SIGINT or SIGTERM is noted, not obeyed at once: the run it
    would stop is already measured and is written first (then the caller exits 130 or 143)."""
    def note(signum: int, frame: FrameType | None) -> None:
        noted.append(signum)

    previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_once(
    loaded: LoadedCatalog,
    *,
    only: set[str] | None = None,
    baseline: Run | None = None,
    baseline_path: str | None = None,
    output: Output | None = None,
    include_ip: bool = False,
    quiet: bool = False,
) -> Outcome:
    """Run the catalog once and write the output file."""
    concurrency, note = usable_concurrency(loaded.settings.concurrency)
    if note and not quiet:
        sys.stderr.write(f"probe: note: {note}\n")
    stream = None
    if output is not None and output.fmt == "jsonl":
        try:
            stream = JsonlWriter(output.path)
        except OSError as exc:
            raise UsageError(f"-o {output.path}: {exc.strerror or exc}") from None
    runner = Runner(loaded=loaded, only=only, include_ip=include_ip, baseline=baseline,
                    baseline_path=baseline_path, concurrency=concurrency,
                    on_target=(lambda t: stream.write(jsonl_target(t))) if stream else None)
    noted: list[int] = []
    try:
        if stream is not None:
            stream.write(jsonl_head(runner.finish()))
        progress = Progress(len(runner.jobs)) if not quiet else None
        signum = loop.run(_run_with_signals(runner, progress))
        with signals_noted(noted):
            result = runner.finish()
            error, written = _write(output, stream, runner, result)
    finally:
        if stream is not None:
            stream.close()
    return Outcome(result, signum or (noted[0] if noted else None), error, written)


def _write(output: Output | None, stream: JsonlWriter | None, runner: Runner,
           result: Run) -> tuple[str | None, str | None]:
    """The rest of the output file: (why it could not be written or None, its whole text when
    rendered at once, so stdout in the same format need not render it again)."""
    if output is None:
        return None, None
    if stream is not None:
        for target in runner.not_streamed(result):
            stream.write(jsonl_target(target))
        for line in jsonl_tail(result):
            stream.write(line)
        return stream.error, None
    text = render(result, output.fmt)
    try:
        write_atomic(output.path, text)
    except OSError as exc:
        return f"{output.path}: {exc.strerror or exc}", text
    return None, text


async def _run_with_signals(runner: Runner, progress: Progress | None) -> int | None:
    loop_ = asyncio.get_running_loop()
    task = asyncio.create_task(runner.run())
    received: list[int] = []

    def stop(signum: int) -> None:
        received.append(signum)
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop_.add_signal_handler(signum, stop, signum)
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
                loop_.remove_signal_handler(signum)
    return received[0] if received else None
