"""The `probe` command line: parse, call, render. No network code here.

Commands raise `ProbeError`s (probe/errors.py) and one decorator turns each into one line on
stderr and its exit code; anything else escaping a command is a bug in the probe: one line and
EXIT_INTERNAL, never a traceback (PROBE_DEBUG=1 shows it). Heavy modules (pydantic models,
httpx, aioquic) are imported inside commands, so `probe --help` starts fast.
"""

from __future__ import annotations

import difflib
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from probe import __version__
from probe.errors import (
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_PROBLEM,
    EXIT_SIGNAL,
    CatalogError,
    ProbeError,
    UsageError,
)

if TYPE_CHECKING:
    from probe.catalog import LoadedCatalog
    from probe.results import Run

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="Which messaging platforms work from this network, and how they are blocked.",
)

# --- options shared by run, watch and serve (and the read commands) --------------------------

CatalogOpt = Annotated[Path | None, typer.Option(
    "--catalog", "-c", help="Catalog file (default ./probes.yaml, else the shipped one).")]
ProfileOpt = Annotated[str | None, typer.Option(
    "--profile", help="Country profile overlay: ru | cn | ir | ae, or a file.")]
OnlyOpt = Annotated[str | None, typer.Option(
    "--only", help="Comma-separated platform ids to test.")]
TimeoutOpt = Annotated[str | None, typer.Option(help="Per-operation timeout, e.g. 3s.")]
AttemptsOpt = Annotated[int | None, typer.Option(help="Samples per target.", min=1)]
ConcurrencyOpt = Annotated[int | None, typer.Option(help="Targets in flight.", min=1)]
IncludeIpOpt = Annotated[bool, typer.Option(
    "--include-ip", help="Keep addresses that could identify you.")]
DbOpt = Annotated[Path | None, typer.Option(
    "--db", help="History database (default: the per-user one).")]
EveryOpt = Annotated[str | None, typer.Option(
    "--every", help="Time between run starts: 30s, 5m, 1h.")]
FormatOpt = Annotated[str, typer.Option(
    "--format", "-f", help="table | summary | json | jsonl | csv | markdown")]
BaselineOpt = Annotated[Path | None, typer.Option(
    "--baseline", "-b", help="A saved run to compare against.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]

F = TypeVar("F", bound=Callable[..., Any])


SAME_TEXT = ("json", "csv")  # formats whose stdout is the -o file's text, baseline or not

# Click's usage errors: click's own under older typer, a copy inside newer typer (which no longer
# depends on click). The base of typer.BadParameter is the class wherever it lives.
_CLICK_ERROR: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def command(name: str | None = None) -> Callable[[F], F]:
    """app.command, with ProbeErrors as one line and their exit code, and bugs as one line and
    EXIT_INTERNAL."""
    def decorate(function: F) -> F:
        @functools.wraps(function)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except ProbeError as exc:
                say_error(exc)
                raise typer.Exit(exc.exit_code) from None
            except (typer.Exit, typer.Abort, _CLICK_ERROR, KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:
                if os.environ.get("PROBE_DEBUG"):
                    raise
                sys.stderr.write(f"probe: internal error: {type(exc).__name__}: {exc} (a bug in "
                                 f"probe: please report it with the command you ran; "
                                 f"PROBE_DEBUG=1 shows where)\n")
                raise typer.Exit(EXIT_INTERNAL) from None

        app.command(name)(guarded)
        return function

    return decorate


def say_error(exc: ProbeError) -> None:
    if isinstance(exc, CatalogError):
        for problem in exc.problems:
            sys.stderr.write(f"{problem}\n")
    else:
        sys.stderr.write(f"probe: {exc}\n")


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"probe {__version__}\n")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")]
          = False) -> None:
    """Which messaging platforms work from this network, and how they are blocked."""


# --- helpers --------------------------------------------------------------------------------


def load_catalog(path: Path | None, profile: str | None = None, *, timeout: str | None = None,
                 attempts: int | None = None, concurrency: int | None = None) -> LoadedCatalog:
    """The catalog (and profile) with the command line's settings laid over it."""
    from probe import catalog

    chosen = path or catalog.default_catalog_path()
    loaded = catalog.load(chosen)
    if profile:
        known = catalog.profile_names()
        if profile not in known and not Path(profile).suffix in (".yaml", ".yml"):
            raise UsageError(f"--profile: no profile {profile!r}{_suggest(profile, known)} "
                             f"(shipped: {', '.join(known)}; or give a .yaml file)")
        loaded = catalog.apply_profile(loaded, profile)
    return catalog.override_settings(loaded, timeout=timeout, attempts=attempts,
                                     concurrency=concurrency)


def _suggest(given: str, known: list[str]) -> str:
    close = difflib.get_close_matches(given, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_format(fmt: str, allowed: tuple[str, ...] | None = None) -> str:
    from probe.report import FORMATS

    allowed = allowed or FORMATS
    if fmt not in allowed:
        raise UsageError(f"unknown format {fmt!r} (one of {', '.join(allowed)})")
    return fmt


def read_run(path: Path) -> Run:
    from probe.results import read_run as read

    return read(path)


def select_platforms(only: str | None, loaded: LoadedCatalog) -> set[str] | None:
    """The platform ids of `--only`, each checked against the catalog."""
    if not only:
        return None
    ids = {p.strip() for p in only.split(",") if p.strip()}
    known = list(loaded.catalog.platforms)
    for unknown in sorted(ids - set(known)):
        raise UsageError(f"--only: no platform {unknown!r} in {loaded.path}"
                         f"{_suggest(unknown, known)} (known: {', '.join(known)})")
    return ids


def exit_code(run: Run, fail_on: str = "degraded") -> int:
    """0 all ok; 1 degraded or blocked (per --fail-on); 3 no network or a captive portal."""
    from probe.errors import EXIT_INCONCLUSIVE

    if run.network.status == "inconclusive":
        return EXIT_INCONCLUSIVE
    statuses = {t.status for t in run.targets} | {f.status for f in run.features}
    bad = {"blocked"} if fail_on == "blocked" else {"blocked", "degraded"}
    if fail_on != "never" and statuses & bad:
        return EXIT_PROBLEM
    return EXIT_OK


def interval(text: str) -> float:
    from probe.schedule import parse_interval

    try:
        return parse_interval(text)
    except ValueError as exc:
        raise UsageError(f"--every: {exc}") from None


def db_path(db: Path | None) -> str:
    from probe.history import default_db_path

    return str(db or default_db_path())


def record(db: Path, result: Run) -> None:
    from probe.history import record_to

    run_id = record_to(db, result)
    sys.stderr.write(f"probe: recorded as run {run_id} in {db}\n")


# --- commands -------------------------------------------------------------------------------


@command()
def run(
    catalog: CatalogOpt = None,
    baseline: BaselineOpt = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Also write the results here: the format follows -f, else the "
                               "extension (.json, .jsonl as they come, .csv, .md).")] = None,
    fmt: FormatOpt = "table",
    only: OnlyOpt = None,
    profile: ProfileOpt = None,
    timeout: TimeoutOpt = None,
    attempts: AttemptsOpt = None,
    concurrency: ConcurrencyOpt = None,
    fail_on: Annotated[str, typer.Option(
        "--fail-on", help="Exit 1 on: degraded (default) | blocked | never.")] = "degraded",
    force: ForceOpt = False,
    include_ip: IncludeIpOpt = False,
    repeat: Annotated[int | None, typer.Option(
        "--repeat", help="Run N times, each kept in the history.", min=1)] = None,
    every: EveryOpt = None,
    db: Annotated[Path | None, typer.Option(
        "--db", help="Append the run(s) to this history database.")] = None,
    details: Annotated[bool, typer.Option(
        "--details", help="The table lists every target, not only those that need a look.")]
        = False,
) -> None:
    """Measure every target of the catalog, judge it, and report."""
    from probe import session
    from probe.errors import EXIT_OUTPUT
    from probe.report import render_for_terminal

    check_format(fmt)
    if fail_on not in ("degraded", "blocked", "never"):
        raise UsageError(f"--fail-on takes degraded, blocked or never, not {fail_on!r}")
    if every is not None and repeat is None:
        raise UsageError("--every needs --repeat N (or use `probe watch` to run until stopped)")
    loaded = load_catalog(catalog, profile, timeout=timeout, attempts=attempts,
                          concurrency=concurrency)
    base = read_run(baseline) if baseline else None
    only_ids = select_platforms(only, loaded)
    if repeat is not None:
        if output is not None:
            raise UsageError("-o keeps one run; with --repeat every run goes to the history "
                             "(see --db)")
        raise typer.Exit(run_repeated(
            loaded, repeat=repeat, every=every or "5m", db=db, fmt=fmt, fail_on=fail_on,
            base=base, baseline_path=str(baseline) if baseline else None, only=only_ids,
            include_ip=include_ip, details=details))
    plan = session.plan_output(output, fmt, force) if output is not None else None
    outcome = session.run_once(
        loaded, only=only_ids, baseline=base, baseline_path=str(baseline) if baseline else None,
        output=plan, include_ip=include_ip)
    text = outcome.written if plan is not None and plan.fmt == fmt in SAME_TEXT else None
    sys.stdout.write(text if text is not None
                     else render_for_terminal(outcome.run, fmt, base, details=details))
    sys.stdout.flush()
    if db is not None:
        record(db, outcome.run)
    if outcome.output_error:
        sys.stderr.write(f"probe: could not write {outcome.output_error}; the report above is "
                         f"the whole run\n")
        raise typer.Exit(EXIT_OUTPUT)
    if outcome.signum:
        raise typer.Exit(EXIT_SIGNAL.get(outcome.signum, 130))
    raise typer.Exit(exit_code(outcome.run, fail_on))


@command()
def report(
    files: Annotated[list[Path], typer.Argument(help="Saved runs (.json or .jsonl).")],
    baseline: Annotated[Path | None, typer.Option(
        "--baseline", "-b", help="Judge again against this run.")] = None,
    fmt: FormatOpt = "table",
    details: Annotated[bool, typer.Option(
        "--details", help="The table lists every target.")] = False,
) -> None:
    """Render saved runs again, in any format (with -b: re-judged against another baseline)."""
    from probe import classify
    from probe.report import render_for_terminal

    check_format(fmt)
    base = read_run(baseline) if baseline else None
    saved = [(path, read_run(path)) for path in files]  # every file read before any output
    for path, run_ in saved:
        if base is not None:
            run_ = classify.rejudge(run_, base, baseline_path=str(baseline))
        if len(saved) > 1 and fmt in ("table", "summary", "markdown"):
            sys.stdout.write(f"{'# ' if fmt == 'markdown' else '== '}{path}\n\n")
        sys.stdout.write(render_for_terminal(run_, fmt, base, details=details))


@command()
def compare(
    before: Annotated[Path, typer.Argument(help="The earlier run (.json or .jsonl).")],
    after: Annotated[Path, typer.Argument(help="The later run.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="table | json")] = "table",
) -> None:
    """What changed between two saved runs, target by target. Exits 1 when a target got worse,
    0 otherwise (so scripts can alert on it)."""
    from probe import compare as comparing

    check_format(fmt, ("table", "json"))
    earlier, later = read_run(before), read_run(after)
    sys.stdout.write(comparing.render(earlier, later, fmt))
    worse = comparing.to_document(earlier, later)["summary"].get("worse", 0)
    raise typer.Exit(EXIT_PROBLEM if worse else EXIT_OK)


@command()
def validate(
    file: Annotated[Path | None, typer.Argument(help="Catalog file.")] = None,
    catalog: CatalogOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Check a catalog; print what it would test."""
    if file is not None and catalog is not None and file != catalog:
        raise UsageError("give the catalog once: as an argument or with -c")
    loaded = load_catalog(file or catalog, profile)
    jobs = list(loaded.jobs())
    controls = sum(1 for j in jobs if j.is_control)
    platforms = loaded.catalog.platforms
    features = sum(len(p.features) for p in platforms.values())
    sys.stdout.write(
        f"{loaded.path}: ok — {len(platforms)} platforms, {features} features, "
        f"{len(jobs) - controls} targets, {controls} controls\n"
    )


@command()
def targets(
    catalog: CatalogOpt = None,
    profile: ProfileOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="tree | json")] = "tree",
) -> None:
    """List platforms, features and targets, with the source of each endpoint."""
    from probe import targets_view

    check_format(fmt, ("tree", "json"))
    sys.stdout.write(targets_view.render_targets(load_catalog(catalog, profile), fmt))


@command()
def schema() -> None:
    """Print the JSON Schema of the catalog, for editors."""
    import json

    from probe import catalog

    sys.stdout.write(json.dumps(catalog.json_schema(), indent=2) + "\n")


@command()
def demo(
    fmt: FormatOpt = "table",
    keep: Annotated[Path | None, typer.Option(
        "--keep", help="Keep the catalog and both runs in this folder.")] = None,
) -> None:
    """A censorship demo on loopback: a mock world measured honest, then censored."""
    from probe import demo as demo_module

    check_format(fmt)
    raise typer.Exit(demo_module.main(fmt, keep))


@command()
def mock(
    scenario: Annotated[Path, typer.Option("--scenario", "-s", help="The scenario file.")],
    listen: Annotated[str | None, typer.Option(
        "--listen", help="Address to serve on (default: the file's).")] = None,
    catalog_out: Annotated[Path | None, typer.Option(
        "--catalog-out", help="Write the generated catalog here (default stdout).")] = None,
    folder: Annotated[Path | None, typer.Option(
        "--dir", help="Folder for the test CA (default temporary).")] = None,
    force: ForceOpt = False,
) -> None:
    """Serve misbehaving endpoints and print the catalog that probes them, until stopped."""
    from probe.mock import world as mock_world

    if catalog_out is not None and catalog_out.exists() and not force:
        raise UsageError(f"{catalog_out} exists; pass --force to overwrite it")
    chosen = mock_world.load_scenario(scenario)
    if listen:
        chosen = chosen.model_copy(update={"listen": listen})
    raise typer.Exit(mock_world.serve_forever(chosen, catalog_out, folder))


# --- repeated runs, history and metrics: thin wrappers over schedule, history and serve ------


def run_repeated(
    loaded: LoadedCatalog, *, repeat: int | None, every: str, db: Path | None, fmt: str,
    fail_on: str, base: Run | None, baseline_path: str | None, only: set[str] | None,
    include_ip: bool, watching: bool = False, details: bool = False,
) -> int:
    """Runs every interval, each appended to the history: `run --repeat N` renders each run,
    `watch` prints a line per run and what changed since the one before."""
    from probe import schedule, session
    from probe.report import render_for_terminal

    seconds = interval(every)
    path = db_path(db)

    def report(result: Run, run_id: int | None, previous: Run | None) -> None:
        if watching:
            lines = [schedule.summary(result, run_id)]
            lines += [f"  {line}" for line in schedule.changes(result, previous)]
            sys.stdout.write("\n".join(lines) + "\n")
        else:
            sys.stdout.write(render_for_terminal(result, fmt, base, details=details))
            sys.stderr.write(f"probe: {schedule.summary(result, run_id)}\n")
        sys.stdout.flush()

    def warn(message: str) -> None:
        sys.stderr.write(f"probe: warning: {message}\n")

    if watching:
        sys.stderr.write(f"probe: a run every {every}, recorded in {path}; Ctrl-C stops\n")
    last, signum = schedule.watch(
        loaded, db=path, every=seconds, count=repeat, report=report, warn=warn, only=only,
        baseline=base, baseline_path=baseline_path, include_ip=include_ip,
        concurrency=session.usable_concurrency(loaded.settings.concurrency)[0])
    if signum:
        return EXIT_SIGNAL.get(signum, 130)
    return exit_code(last, fail_on) if last is not None else EXIT_OK


@command()
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
    loaded = load_catalog(catalog, profile, timeout=timeout, attempts=attempts,
                          concurrency=concurrency)
    raise typer.Exit(run_repeated(
        loaded, repeat=None, every=every or "5m", db=db, fmt="table", fail_on="never",
        base=None, baseline_path=None, only=select_platforms(only, loaded),
        include_ip=include_ip, watching=True))


@command("history")
def history_command(
    db: DbOpt = None,
    platform: Annotated[str | None, typer.Option(
        "--platform", help="Only this platform.")] = None,
    feature: Annotated[str | None, typer.Option("--feature", help="Only this feature.")]
        = None,
    since: Annotated[str | None, typer.Option(
        "--since", help="Runs since: 24h, 7d, or a date/time (UTC).")] = None,
    last: Annotated[int | None, typer.Option(
        "--last", help="Only the last N runs.", min=1)] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table | csv | jsonl")] = "table",
) -> None:
    """Recorded runs over time: a timeline per feature and target, or a row per target per run."""
    from probe import history as store

    check_format(fmt, ("table", "csv", "jsonl"))
    try:
        cutoff = store.parse_since(since) if since else None
    except ValueError as exc:
        raise UsageError(f"--since: {exc}") from None
    connection = store.connect(db_path(db), create=False)
    try:
        if platform is not None or feature is not None:
            store.check_names(connection, platform=platform, feature=feature)
        found = store.query(connection, platform=platform, feature=feature, since=cutoff,
                            last=last)
    finally:
        connection.close()
    if fmt == "csv":
        sys.stdout.write(store.to_csv(found.rows))
    elif fmt == "jsonl":
        sys.stdout.write(store.to_jsonl(found.rows))
    else:
        import shutil

        tty = sys.stdout.isatty()
        width = max(100, shutil.get_terminal_size().columns) if tty else 160
        sys.stdout.write(store.render_timeline(found, width=width, color=tty))


@command("serve")
def serve_command(
    catalog: CatalogOpt = None,
    listen: Annotated[str, typer.Option(
        "--listen", help="Where to serve /metrics (loopback unless told).")] = "127.0.0.1:9464",
    every: EveryOpt = "5m",
    db: Annotated[Path | None, typer.Option(
        "--db", help="Also append each run to this history.")] = None,
    only: OnlyOpt = None,
    profile: ProfileOpt = None,
    timeout: TimeoutOpt = None,
    attempts: AttemptsOpt = None,
    concurrency: ConcurrencyOpt = None,
    include_ip: IncludeIpOpt = False,
) -> None:
    """Run the catalog every interval and expose the verdicts as Prometheus metrics."""
    from probe import loop, serve, session

    seconds = interval(every or "5m")
    try:
        host, port = serve.parse_listen(listen)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    loaded = load_catalog(catalog, profile, timeout=timeout, attempts=attempts,
                          concurrency=concurrency)
    only_ids = select_platforms(only, loaded)
    if db is not None:
        from probe.history import connect

        connect(db).close()
    warning = serve.bind_warning(host)
    if warning:
        serve.warn(warning)

    def listening(address: tuple[str, int]) -> None:
        shown = f"[{address[0]}]" if ":" in address[0] else address[0]
        sys.stderr.write(f"probe: serving http://{shown}:{address[1]}/metrics, "
                         f"a run every {every}; Ctrl-C stops\n")

    try:
        _, signum = loop.run(serve.serve(
            loaded, host=host, port=port, every=seconds, db=str(db) if db else None,
            on_listening=listening, only=only_ids, include_ip=include_ip,
            concurrency=session.usable_concurrency(loaded.settings.concurrency)[0]))
    except OSError as exc:
        raise UsageError(f"--listen {listen}: {exc.strerror or exc}") from None
    raise typer.Exit(EXIT_SIGNAL.get(signum, 130) if signum else EXIT_OK)


@command()
def reflect(
    listen: Annotated[str, typer.Option(
        "--listen", help="Address to listen on, e.g. 0.0.0.0 or ::.")] = "127.0.0.1",
    udp_ports: Annotated[str, typer.Option(
        "--udp-ports", help="UDP ports, e.g. 3478-3481,1400,19302.")] = "3478",
    tcp_ports: Annotated[str, typer.Option(
        "--tcp-ports", help="TCP (TLS) ports, e.g. 443,5222.")] = "",
    token_file: Annotated[Path | None, typer.Option(
        "--token-file", help="Answer only requests that carry this shared secret's token.")]
        = None,
    cert: Annotated[Path | None, typer.Option(
        "--cert", help="TLS certificate (made there at the first start if missing).")] = None,
    key: Annotated[Path | None, typer.Option("--key", help="Its private key.")] = None,
    open_stun: Annotated[bool, typer.Option(
        "--open-stun", help="With a token file, still answer plain STUN Binding requests.")]
        = False,
) -> None:
    """The far end for differential tests: run it on a host outside the censored network
    (README "Running a reflector")."""
    from probe import reflect as reflector

    raise typer.Exit(reflector.main(listen, udp_ports, tcp_ports, token_file, cert=cert,
                                    key=key, open_stun=open_stun))
