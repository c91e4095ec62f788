"""The `probe` command line: parse, call, render. No network code here.

Heavy modules (pydantic models, httpx, aioquic) are imported inside commands, so `probe --help`
starts fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import typer

if TYPE_CHECKING:
    from probe.catalog import LoadedCatalog
    from probe.results import Run

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Which messaging platforms work from this network, and how they are blocked.",
)

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, EXIT_INCONCLUSIVE = 0, 1, 2, 3
EXIT_SIGNAL = {2: 130, 15: 143}  # SIGINT, SIGTERM

CatalogOpt = Annotated[
    Optional[Path],
    typer.Option("--catalog", "-c", help="Catalog file (default ./probes.yaml, else the shipped one)."),
]
FormatOpt = Annotated[
    str, typer.Option("--format", "-f", help="table | json | jsonl | csv | markdown")
]
ProfileOpt = Annotated[
    Optional[str], typer.Option("--profile", help="Country profile overlay: ru | cn | ir | ae.")
]


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print an error for the user (no traceback) and exit."""
    sys.stderr.write(f"probe: {message}\n")
    raise typer.Exit(code)


def load_catalog(path: Path | None, profile: str | None = None) -> LoadedCatalog:
    from probe import catalog
    from probe.errors import CatalogError

    try:
        default = getattr(catalog, "default_catalog_path", None)
        chosen = path or (default() if default else Path("probes.yaml"))
        loaded = catalog.load(chosen)
        if profile:
            apply_profile = getattr(catalog, "apply_profile", None)
            if apply_profile is None:
                fail("profiles are not available in this build")
            loaded = apply_profile(loaded, profile)
        return loaded
    except CatalogError as exc:
        for problem in exc.problems:
            sys.stderr.write(f"{problem}\n")
        raise typer.Exit(EXIT_USAGE) from None


def check_format(fmt: str) -> str:
    from probe.report import FORMATS

    if fmt not in FORMATS:
        fail(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    return fmt


def read_run_or_fail(path: Path) -> Run:
    from probe.errors import ResultFileError
    from probe.results import read_run

    try:
        return read_run(path)
    except ResultFileError as exc:
        fail(str(exc))


def exit_code(run: Run, fail_on: str = "degraded") -> int:
    """0 all ok; 1 degraded or blocked (per --fail-on); 3 the network itself is down."""
    if run.network.status == "inconclusive":
        return EXIT_INCONCLUSIVE
    statuses = {t.status for t in run.targets} | {f.status for f in run.features}
    bad = {"blocked"} if fail_on == "blocked" else {"blocked", "degraded"}
    if fail_on != "never" and statuses & bad:
        return EXIT_PROBLEM
    return EXIT_OK


@app.command()
def run(
    catalog: CatalogOpt = None,
    baseline: Annotated[
        Optional[Path], typer.Option("--baseline", "-b", help="A saved run to compare against.")
    ] = None,
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", help="Also write results: .json whole, .jsonl as they come."),
    ] = None,
    fmt: FormatOpt = "table",
    only: Annotated[
        Optional[str], typer.Option("--only", help="Comma-separated platform ids to test.")
    ] = None,
    profile: ProfileOpt = None,
    timeout: Annotated[Optional[str], typer.Option(help="Per-operation timeout, e.g. 3s.")] = None,
    attempts: Annotated[Optional[int], typer.Option(help="Samples per target.", min=1)] = None,
    concurrency: Annotated[Optional[int], typer.Option(help="Targets in flight.", min=1)] = None,
    fail_on: Annotated[
        str, typer.Option("--fail-on", help="Exit 1 on: degraded (default) | blocked | never.")
    ] = "degraded",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing -o file.")] = False,
    include_ip: Annotated[
        bool, typer.Option("--include-ip", help="Keep addresses that could identify you.")
    ] = False,
    repeat: Annotated[
        Optional[int], typer.Option("--repeat", help="Run N times, each kept in the history.", min=1)
    ] = None,
    every: Annotated[str, typer.Option("--every", help="With --repeat: time between runs.")] = "5m",
    db: Annotated[
        Optional[Path], typer.Option("--db", help="Append the run(s) to this history database.")
    ] = None,
) -> None:
    """Measure every target of the catalog, judge it, and report."""
    from probe import session

    check_format(fmt)
    if fail_on not in ("degraded", "blocked", "never"):
        fail(f"--fail-on takes degraded, blocked or never, not {fail_on!r}")
    loaded = load_catalog(catalog, profile)
    loaded = session.override_settings(loaded, timeout=timeout, attempts=attempts,
                                       concurrency=concurrency, fail=fail)
    base = read_run_or_fail(baseline) if baseline else None
    if output is not None and output.exists() and not force:
        fail(f"{output} exists; pass --force to overwrite it")
    only_ids = only_or_fail(only, loaded)
    if repeat is not None:
        if output is not None:
            fail("-o keeps one run; with --repeat every run goes to the history (see --db)")
        raise typer.Exit(run_repeated(
            loaded, repeat=repeat, every=every, db=db, fmt=fmt, fail_on=fail_on, base=base,
            baseline_path=str(baseline) if baseline else None, only=only_ids,
            include_ip=include_ip))
    result, signum = session.run_once(
        loaded, only=only_ids, baseline=base, baseline_path=str(baseline) if baseline else None,
        output=output, include_ip=include_ip,
    )
    sys.stdout.write(render_for_terminal(result, fmt, base))
    if db is not None:
        record_or_fail(db, result)
    if signum:
        raise typer.Exit(EXIT_SIGNAL.get(signum, 130))
    raise typer.Exit(exit_code(result, fail_on))


def render_for_terminal(result: Run, fmt: str, baseline: Run | None) -> str:
    from probe.report import render

    if fmt == "table" and sys.stdout.isatty():
        from probe.report import text

        return text.table(result, baseline, width=max(80, typer.get_terminal_size()[0]))
    return render(result, fmt, baseline)


@app.command()
def report(
    files: Annotated[list[Path], typer.Argument(help="Saved runs (.json or .jsonl).")],
    baseline: Annotated[
        Optional[Path], typer.Option("--baseline", "-b", help="Judge again against this run.")
    ] = None,
    fmt: FormatOpt = "table",
) -> None:
    """Render saved runs again, in any format (with -b: re-judged against another baseline)."""
    from probe import classify

    check_format(fmt)
    base = read_run_or_fail(baseline) if baseline else None
    for path in files:
        saved = read_run_or_fail(path)
        if base is not None:
            rejudge = getattr(classify, "rejudge", None)
            if rejudge is None:
                fail("re-judging against a baseline is not available in this build")
            saved = rejudge(saved, base, baseline_path=str(baseline))
        sys.stdout.write(render_for_terminal(saved, fmt, base))


@app.command()
def compare(
    before: Annotated[Path, typer.Argument(help="The earlier run.")],
    after: Annotated[Path, typer.Argument(help="The later run.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="table | json")] = "table",
) -> None:
    """What changed between two saved runs, target by target."""
    from probe import compare as comparing

    if fmt not in ("table", "json"):
        fail("compare --format takes table or json")
    sys.stdout.write(comparing.render(read_run_or_fail(before), read_run_or_fail(after), fmt))


@app.command()
def validate(
    file: Annotated[Optional[Path], typer.Argument(help="Catalog file.")] = None,
    profile: ProfileOpt = None,
) -> None:
    """Check a catalog; print what it would test."""
    loaded = load_catalog(file, profile)
    jobs = list(loaded.jobs())
    controls = sum(1 for j in jobs if j.is_control)
    platforms = loaded.catalog.platforms
    features = sum(len(p.features) for p in platforms.values())
    sys.stdout.write(
        f"{loaded.path}: ok — {len(platforms)} platforms, {features} features, "
        f"{len(jobs) - controls} targets, {controls} controls\n"
    )


@app.command()
def targets(
    catalog: CatalogOpt = None,
    profile: ProfileOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="tree | json")] = "tree",
) -> None:
    """List platforms, features and targets, with the source of each endpoint."""
    from probe import targets_view

    if fmt not in ("tree", "json"):
        fail("targets --format takes tree or json")
    sys.stdout.write(targets_view.render_targets(load_catalog(catalog, profile), fmt))


@app.command()
def schema() -> None:
    """Print the JSON Schema of the catalog, for editors."""
    import json

    from probe import catalog

    sys.stdout.write(json.dumps(catalog.json_schema(), indent=2) + "\n")


@app.command()
def demo(
    fmt: FormatOpt = "table",
    keep: Annotated[
        Optional[Path], typer.Option("--keep", help="Keep the catalog and both runs in this folder.")
    ] = None,
) -> None:
    """A censorship demo on loopback: a mock world measured honest, then censored."""
    from probe import demo as demo_module

    check_format(fmt)
    raise typer.Exit(demo_module.main(fmt, keep))


@app.command()
def mock(
    scenario: Annotated[Path, typer.Option("--scenario", "-s", help="The scenario file.")],
    listen: Annotated[
        Optional[str], typer.Option("--listen", help="Address to serve on (default: the file's).")
    ] = None,
    catalog_out: Annotated[
        Optional[Path],
        typer.Option("--catalog-out", help="Write the generated catalog here (default stdout)."),
    ] = None,
    folder: Annotated[
        Optional[Path], typer.Option("--dir", help="Folder for the test CA (default temporary).")
    ] = None,
) -> None:
    """Serve misbehaving endpoints and print the catalog that probes them, until stopped."""
    from probe.errors import CatalogError
    from probe.mock import world as mock_world

    try:
        chosen = mock_world.load_scenario(scenario)
    except CatalogError as exc:
        for problem in exc.problems:
            sys.stderr.write(f"{problem}\n")
        raise typer.Exit(EXIT_USAGE) from None
    except OSError as exc:
        fail(f"{scenario}: cannot read: {exc.strerror or exc}")
    if listen:
        chosen = chosen.model_copy(update={"listen": listen})
    raise typer.Exit(mock_world.serve_forever(chosen, catalog_out, folder))


# --- repeated runs, history and metrics: thin wrappers over schedule, history and serve ------

DbOpt = Annotated[
    Optional[Path], typer.Option("--db", help="History database (default: the per-user one).")
]
EveryOpt = Annotated[str, typer.Option("--every", help="Time between run starts: 30s, 5m, 1h.")]
OnlyOpt = Annotated[Optional[str], typer.Option("--only", help="Comma-separated platform ids.")]
TimeoutOpt = Annotated[Optional[str], typer.Option(help="Per-operation timeout, e.g. 3s.")]
AttemptsOpt = Annotated[Optional[int], typer.Option(help="Samples per target.", min=1)]
ConcurrencyOpt = Annotated[Optional[int], typer.Option(help="Targets in flight.", min=1)]
IncludeIpOpt = Annotated[
    bool, typer.Option("--include-ip", help="Keep addresses that could identify you.")
]


def interval_or_fail(text: str) -> float:
    from probe.schedule import parse_interval

    try:
        return parse_interval(text)
    except ValueError as exc:
        fail(f"--every: {exc}")


def db_path(db: Path | None) -> str:
    from probe.history import default_db_path

    return str(db or default_db_path())


def only_or_fail(only: str | None, loaded: LoadedCatalog) -> set[str] | None:
    ids = {p.strip() for p in only.split(",") if p.strip()} if only else None
    unknown = (ids or set()) - set(loaded.catalog.platforms)
    if unknown:
        fail(f"--only: no platform {', '.join(sorted(unknown))} in {loaded.path}")
    return ids


def record_or_fail(db: Path, result: Run) -> None:
    from probe.history import HistoryError, record_to

    try:
        run_id = record_to(db, result)
    except HistoryError as exc:
        fail(str(exc))
    sys.stderr.write(f"probe: recorded as run {run_id} in {db}\n")


def run_repeated(
    loaded: LoadedCatalog, *, repeat: int | None, every: str, db: Path | None, fmt: str,
    fail_on: str, base: Run | None, baseline_path: str | None, only: set[str] | None,
    include_ip: bool, watching: bool = False,
) -> int:
    """Runs every interval, each appended to the history: `run --repeat N` renders each run,
    `watch` prints a line per run and what changed since the one before."""
    from probe import schedule, session
    from probe.history import HistoryError

    seconds = interval_or_fail(every)
    path = db_path(db)

    def report(result: Run, run_id: int | None, previous: Run | None) -> None:
        if watching:
            lines = [schedule.summary(result, run_id)]
            lines += [f"  {line}" for line in schedule.changes(result, previous)]
            sys.stdout.write("\n".join(lines) + "\n")
        else:
            sys.stdout.write(render_for_terminal(result, fmt, base))
            sys.stderr.write(f"probe: {schedule.summary(result, run_id)}\n")
        sys.stdout.flush()

    if watching:
        sys.stderr.write(f"probe: a run every {every}, recorded in {path}; Ctrl-C stops\n")
    try:
        last, signum = schedule.watch(
            loaded, db=path, every=seconds, count=repeat, report=report,
            warn=lambda m: sys.stderr.write(f"probe: warning: {m}\n"), only=only,
            baseline=base, baseline_path=baseline_path, include_ip=include_ip,
            concurrency=session.usable_concurrency(loaded.settings.concurrency)[0])
    except HistoryError as exc:
        fail(str(exc))
    if signum:
        return EXIT_SIGNAL.get(signum, 130)
    return exit_code(last, fail_on) if last is not None else EXIT_OK


@app.command()
def watch(
    catalog: CatalogOpt = None,
    every: EveryOpt = "5m",
    db: DbOpt = None,
    only: OnlyOpt = None,
    profile: ProfileOpt = None,
    timeout: TimeoutOpt = None,
    attempts: AttemptsOpt = None,
    concurrency: ConcurrencyOpt = None,
    include_ip: IncludeIpOpt = False,
) -> None:
    """Run the catalog every interval until stopped; record each run; print what changed."""
    from probe import session

    loaded = session.override_settings(load_catalog(catalog, profile), timeout=timeout,
                                       attempts=attempts, concurrency=concurrency, fail=fail)
    raise typer.Exit(run_repeated(
        loaded, repeat=None, every=every, db=db, fmt="table", fail_on="never", base=None,
        baseline_path=None, only=only_or_fail(only, loaded), include_ip=include_ip,
        watching=True))


@app.command("history")
def history_command(
    db: DbOpt = None,
    platform: Annotated[Optional[str], typer.Option("--platform", help="Only this platform.")] = None,
    feature: Annotated[Optional[str], typer.Option("--feature", help="Only this feature.")] = None,
    since: Annotated[
        Optional[str], typer.Option("--since", help="Runs since: 24h, 7d, or a date/time (UTC).")
    ] = None,
    last: Annotated[Optional[int], typer.Option("--last", help="Only the last N runs.", min=1)] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table | csv | jsonl")] = "table",
) -> None:
    """Recorded runs over time: a timeline per feature and target, or a row per target per run."""
    from probe import history as store

    if fmt not in ("table", "csv", "jsonl"):
        fail("history --format takes table, csv or jsonl")
    try:
        cutoff = store.parse_since(since) if since else None
        connection = store.connect(db_path(db), create=False)
        try:
            found = store.query(connection, platform=platform, feature=feature, since=cutoff,
                                last=last)
        finally:
            connection.close()
    except store.HistoryError as exc:
        fail(str(exc))
    if fmt == "csv":
        sys.stdout.write(store.to_csv(found.rows))
    elif fmt == "jsonl":
        sys.stdout.write(store.to_jsonl(found.rows))
    else:
        tty = sys.stdout.isatty()
        width = max(100, typer.get_terminal_size()[0]) if tty else 160
        sys.stdout.write(store.render_timeline(found, width=width, color=tty))


@app.command("serve")
def serve_command(
    catalog: CatalogOpt = None,
    listen: Annotated[
        str, typer.Option("--listen", help="Where to serve /metrics (loopback unless told).")
    ] = "127.0.0.1:9464",
    every: EveryOpt = "5m",
    db: Annotated[
        Optional[Path], typer.Option("--db", help="Also append each run to this history.")
    ] = None,
    only: OnlyOpt = None,
    profile: ProfileOpt = None,
    timeout: TimeoutOpt = None,
    attempts: AttemptsOpt = None,
    concurrency: ConcurrencyOpt = None,
    include_ip: IncludeIpOpt = False,
) -> None:
    """Run the catalog every interval and expose the verdicts as Prometheus metrics."""
    import asyncio

    from probe import serve, session

    seconds = interval_or_fail(every)
    try:
        host, port = serve.parse_listen(listen)
    except ValueError as exc:
        fail(str(exc))
    loaded = session.override_settings(load_catalog(catalog, profile), timeout=timeout,
                                       attempts=attempts, concurrency=concurrency, fail=fail)
    only_ids = only_or_fail(only, loaded)
    if db is not None:
        from probe.history import HistoryError, connect

        try:
            connect(db).close()
        except HistoryError as exc:
            fail(str(exc))
    warning = serve.bind_warning(host)
    if warning:
        serve.warn(warning)

    def listening(address: tuple[str, int]) -> None:
        shown = f"[{address[0]}]" if ":" in address[0] else address[0]
        sys.stderr.write(f"probe: serving http://{shown}:{address[1]}/metrics, "
                         f"a run every {every}; Ctrl-C stops\n")

    try:
        _, signum = asyncio.run(serve.serve(
            loaded, host=host, port=port, every=seconds, db=str(db) if db else None,
            on_listening=listening, only=only_ids, include_ip=include_ip,
            concurrency=session.usable_concurrency(loaded.settings.concurrency)[0]))
    except OSError as exc:
        fail(f"--listen {listen}: {exc.strerror or exc}")
    raise typer.Exit(EXIT_SIGNAL.get(signum, 130) if signum else EXIT_OK)


def main() -> None:
    """The `probe` command, with probe/__main__.py's Ctrl-C handling."""
    from probe.__main__ import main as entry

    entry()


if __name__ == "__main__":
    main()
