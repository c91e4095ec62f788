"""The history store: every run appended to one SQLite file, queried as a timeline or a table.

Strategy: one row per run in `runs` (its document minus targets and controls), one row per
target (controls too) in `results` with the whole TargetResult (JSON, zlib-compressed: a watcher
runs for months) beside a few columns pulled out for queries, and one row per feature in
`features`. A run is written in ONE transaction, so a
process killed mid-write leaves the run whole or absent, never half. WAL mode lets readers work
while a watcher writes; concurrent writers queue on SQLite's lock (`busy_timeout`) and give up
with a clear HistoryError rather than corrupt anything. A saved run can be rebuilt whole from
the rows (`load_run`), so nothing measured is lost by keeping history instead of JSON files.

Opening: commands that only read (`probe history`) open the file read-only (an SQLite URI with
mode=ro): they never create it, write the schema, switch the journal mode or migrate. Every
opening checks the file is probe's before using it: probe's tables with the columns it reads
(extra tables and columns are let be), and a schema version it knows. Another program's SQLite
file, an empty file given to a read command, a file that is not SQLite or whose pages are
damaged (SQLite says so when it reads them, at opening or later in a query) is one HistoryError
line, never a traceback; and a command that records never writes into another program's file.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import functools
import io
import json
import os
import sqlite3
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from probe.errors import HistoryError
from probe.metrics import metrics_of
from probe.results import Run, TargetResult

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000  # a writer waits this long for another writer before giving up
CONTROL = "(control)"  # the platform column of a control, as in the CSV report

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id              INTEGER PRIMARY KEY,
    started_at      TEXT NOT NULL,
    started_ts      REAL,           -- seconds since the epoch, for --since
    finished_at     TEXT NOT NULL,
    catalog_path    TEXT NOT NULL,
    catalog_sha256  TEXT NOT NULL,
    probe_version   TEXT NOT NULL,
    baseline        TEXT,
    interrupted     INTEGER NOT NULL,
    network_status  TEXT NOT NULL,
    network_reason  TEXT NOT NULL,
    targets         INTEGER NOT NULL,
    ok              INTEGER NOT NULL,
    degraded        INTEGER NOT NULL,
    blocked         INTEGER NOT NULL,
    inconclusive    INTEGER NOT NULL,
    document        TEXT NOT NULL   -- the run without targets and controls (they are rows below)
);
CREATE TABLE IF NOT EXISTS results (
    run_id          INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    position        INTEGER NOT NULL,   -- order in the run: controls first, then catalog order
    control         INTEGER NOT NULL,
    platform        TEXT,
    feature         TEXT,
    url             TEXT NOT NULL,
    name            TEXT,
    status          TEXT NOT NULL,
    reason          TEXT NOT NULL,
    rtt_ms          REAL,
    throughput_bps  REAL,
    loss            REAL,
    document        BLOB NOT NULL,      -- the whole TargetResult, zlib-compressed JSON
    PRIMARY KEY (run_id, position)
);
CREATE TABLE IF NOT EXISTS features (
    run_id          INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    platform        TEXT NOT NULL,
    feature         TEXT NOT NULL,
    status          TEXT NOT NULL,
    reason          TEXT NOT NULL,
    PRIMARY KEY (run_id, platform, feature)
);
"""


# --- where ---------------------------------------------------------------------------------


def default_db_path() -> Path:
    """The per-user history file: XDG data dir on Linux, Application Support, LOCALAPPDATA."""
    if sys.platform == "win32":
        root = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        root = Path.home() / "Library" / "Application Support"
    else:
        root = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return root / "probe" / "history.sqlite"


# --- opening -------------------------------------------------------------------------------


_NO_HISTORY = "no history yet (record a run with --db or probe watch)"


def connect(path: str | Path, *, create: bool = True) -> sqlite3.Connection:
    """Open a history database, checking it is probe's. `create` (commands that record runs):
    made if missing, its schema written or migrated. Otherwise (commands that only read): opened
    read-only, never written."""
    path = Path(path)
    if not create:
        return _open_read_only(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HistoryError(f"{path}: cannot open history: {exc}") from None
    db = _sqlite(path, path)
    with _closed_on_failure(db, path):
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _check_store(db, path, empty=True)  # before anything is written: another's file?
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":  # e.g. a network file system: still safe, only less concurrent
            db.execute("PRAGMA journal_mode = DELETE")
        db.execute("PRAGMA synchronous = FULL")  # a committed run survives a power cut too
        db.execute("PRAGMA foreign_keys = ON")
        _migrate(db, path)
    return db


def _sqlite(target: str | Path, path: Path, *, uri: bool = False) -> sqlite3.Connection:
    """sqlite3.connect, its failure one HistoryError line naming `path`."""
    try:
        return sqlite3.connect(target, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               uri=uri)
    except (OSError, sqlite3.Error) as exc:
        raise HistoryError(f"{path}: cannot open history: {exc}") from None


@contextmanager
def _closed_on_failure(db: sqlite3.Connection, path: Path) -> Iterator[None]:
    """While a store is being checked: on failure it is closed, SQLite's error one line."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        db.close()
        raise HistoryError(f"{path}: not a usable history database: {exc}") from None
    except HistoryError:
        db.close()
        raise


def _open_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to an existing store that is probe's (see the module docstring)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise HistoryError(f"{path}: {_NO_HISTORY}") from None
    except OSError as exc:
        raise HistoryError(f"{path}: cannot open history: {exc.strerror or exc}") from None
    if path.is_dir():
        raise HistoryError(f"{path}: a directory, not a history file")
    if size == 0:  # SQLite would take it as an empty database
        raise HistoryError(f"{path}: the file is empty: {_NO_HISTORY}")
    db = _sqlite(f"{path.resolve().as_uri()}?mode=ro", path, uri=True)
    with _closed_on_failure(db, path):
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")  # a writer may hold the lock
        _check_store(db, path, empty=False)
        version = db.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        if not isinstance(version, int):
            raise HistoryError(f"{path}: not a probe history: it has no schema version")
        _check_version(version, path)
    return db


@functools.cache
def _probe_columns() -> dict[str, frozenset[str]]:
    """Probe's tables and their columns, as _SCHEMA makes them."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(_SCHEMA)
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: frozenset(r[1] for r in db.execute(f"PRAGMA table_info({t})")) for t in tables}
    finally:
        db.close()


def _check_store(db: sqlite3.Connection, path: Path, *, empty: bool) -> None:
    """Refuse a database that is not probe's store; `empty`: one without tables is fine (a
    new store). Raises sqlite3.DatabaseError when the file is not SQLite or is damaged."""
    tables = {r[0] for r in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'")}
    if not tables:
        if empty:
            return
        raise HistoryError(f"{path}: an empty database: {_NO_HISTORY}")
    expected = _probe_columns()
    if missing := sorted(set(expected) - tables):
        raise HistoryError(
            f"{path}: not a probe history: another program's database (tables "
            f"{', '.join(sorted(tables)[:5])}{', ...' if len(tables) > 5 else ''}; probe's "
            f"{', '.join(missing)} missing)")
    for table, columns in expected.items():
        have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        if lacking := sorted(columns - have):
            raise HistoryError(f"{path}: not a probe history: its table {table} has no "
                               f"{', '.join(lacking)}")


def _check_version(version: int, path: Path) -> None:
    if version > SCHEMA_VERSION:
        raise HistoryError(
            f"{path}: history written by a newer probe (schema {version}); upgrade probe")


P = ParamSpec("P")
T = TypeVar("T")


def _damage_is_one_line(function: Callable[P, T]) -> Callable[P, T]:
    """A store function whose SQLite errors (pages damaged since the store was opened) are a
    HistoryError naming the file, not a traceback. Its first argument is the connection."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return function(*args, **kwargs)
        except sqlite3.DatabaseError as exc:
            db = args[0]
            where = "history"
            if isinstance(db, sqlite3.Connection):
                with contextlib.suppress(sqlite3.Error):
                    where = db.execute("PRAGMA database_list").fetchone()[2] or where
            raise HistoryError(f"{where}: not a usable history database: {exc}") from None

    return wrapper


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    with _write(db, path):
        # statement by statement: executescript() would commit the transaction first
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        row = db.execute("SELECT max(version) FROM schema_version").fetchone()
        version = row[0]
        if version is None:
            db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        else:
            _check_version(version, path)


@contextmanager
def _write(db: sqlite3.Connection, path: str | Path) -> Iterator[None]:
    """One write transaction, taking the write lock up front (no upgrade deadlocks)."""
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise HistoryError(
                f"{path}: history is busy: another probe has been writing for over "
                f"{BUSY_TIMEOUT_MS // 1000} s; try again") from None
        raise HistoryError(f"{path}: cannot write history: {exc}") from None
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


# --- writing -------------------------------------------------------------------------------


def _epoch(iso: str) -> float | None:
    """Seconds since the epoch for an ISO date/time; one without a zone is taken as UTC."""
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@_damage_is_one_line
def record(db: sqlite3.Connection, run: Run, path: str | Path = "history") -> int:
    """Append a whole run in one transaction; returns its id."""
    document = json.loads(run.to_json(indent=None))
    controls = run.network.controls
    document["targets"] = []
    document["network"]["controls"] = []
    counts = {s: sum(1 for t in run.targets if t.status == s)
              for s in ("ok", "degraded", "blocked", "inconclusive")}
    with _write(db, path):
        cursor = db.execute(
            "INSERT INTO runs (started_at, started_ts, finished_at, catalog_path, catalog_sha256,"
            " probe_version, baseline, interrupted, network_status, network_reason, targets,"
            " ok, degraded, blocked, inconclusive, document)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (run.started_at, _epoch(run.started_at), run.finished_at, run.catalog.path,
             run.catalog.sha256, run.probe_version, run.baseline, int(run.interrupted),
             run.network.status, run.network.reason, len(run.targets), counts["ok"],
             counts["degraded"], counts["blocked"], counts["inconclusive"],
             json.dumps(document, separators=(",", ":"), ensure_ascii=False)),
        )
        run_id = cursor.lastrowid
        assert run_id is not None
        rows = []
        for position, (control, target) in enumerate(
                [(True, c) for c in controls] + [(False, t) for t in run.targets]):
            rtt, rate, loss = metrics_of(target)
            rows.append((run_id, position, int(control), target.platform, target.feature,
                         target.url, target.name, target.status, target.reason, rtt, rate, loss,
                         zlib.compress(target.model_dump_json().encode(), 6)))
        db.executemany("INSERT INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        db.executemany("INSERT INTO features VALUES (?,?,?,?,?)",
                       [(run_id, f.platform, f.feature, f.status, f.reason)
                        for f in run.features])
    return run_id


def record_to(path: str | Path, run: Run) -> int:
    """Open, append one run, close: what a repeating command does after each run."""
    db = connect(path)
    try:
        return record(db, run, path)
    finally:
        db.close()


# --- reading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryRow:
    """One target in one run: the row of `probe history --format csv|jsonl`."""

    run_id: int
    started_at: str
    platform: str
    feature: str
    url: str
    name: str
    status: str
    reason: str
    rtt_ms: float | None
    throughput_bps: float | None
    loss: float | None


COLUMNS = tuple(f.name for f in fields(HistoryRow))


@dataclass(frozen=True)
class RunInfo:
    id: int
    started_at: str
    interrupted: bool
    network_status: str


@dataclass
class History:
    """What a query found: the runs (oldest first), target rows and feature verdicts."""

    runs: list[RunInfo]
    rows: list[HistoryRow]
    features: dict[tuple[str, str], dict[int, tuple[str, str]]]  # (p, f) -> run -> (status, reason)


def parse_since(text: str, now: float | None = None) -> float:
    """'24h', '7d', '30m', '90s' before now, or an ISO date/time -> seconds since the epoch."""
    now = datetime.now(UTC).timestamp() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    value = text.strip()
    if value and value[-1] in units and value[:-1].replace(".", "", 1).isdigit():
        return now - float(value[:-1]) * units[value[-1]]
    stamp = _epoch(value)
    if stamp is None:
        raise HistoryError(f"--since: expected e.g. 24h, 7d or 2026-11-23T06:00Z, got {text!r}")
    return stamp


@_damage_is_one_line
def check_names(db: sqlite3.Connection, *, platform: str | None = None,
                feature: str | None = None) -> None:
    """Refuse a platform or feature the history has never recorded (a typo would otherwise
    show an empty timeline, as if nothing had been measured)."""
    from probe.errors import UsageError

    for option, column, value in (("--platform", "platform", platform),
                                  ("--feature", "feature", feature)):
        if value is None:
            continue
        known = sorted(row[0] for row in db.execute(
            f"SELECT DISTINCT {column} FROM results WHERE {column} IS NOT NULL"))
        if option == "--platform":
            known.append(CONTROL)
        if value not in known:
            close = difflib.get_close_matches(value, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"{option}: no {column} {value!r} in the history{hint} "
                             f"(recorded: {', '.join(known) or 'none'})")


@_damage_is_one_line
def query(
    db: sqlite3.Connection,
    *,
    platform: str | None = None,
    feature: str | None = None,
    since: float | None = None,
    last: int | None = None,
) -> History:
    """Rows of the runs since a time (or the last N runs), filtered by platform and feature."""
    where, args = [], []
    if since is not None:
        where.append("started_ts >= ?")
        args.append(since)
    sql = "SELECT id, started_at, interrupted, network_status FROM runs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY started_ts, id"
    runs = [RunInfo(r[0], r[1], bool(r[2]), r[3]) for r in db.execute(sql, args)]
    if last is not None:
        runs = runs[-last:] if last > 0 else []
    if not runs:
        return History([], [], {})
    ids = {r.id for r in runs}
    first = min(ids)
    filters: list[str] = ["run_id >= ?"]
    fargs: list[object] = [first]
    if platform is not None:
        filters.append("coalesce(platform, ?) = ?")
        fargs += [CONTROL, platform]
    if feature is not None:
        filters.append("feature = ?")
        fargs.append(feature)
    rows = []
    order = {r.id: i for i, r in enumerate(runs)}
    for r in db.execute(
            "SELECT run_id, control, platform, feature, url, name, status, reason, rtt_ms,"
            " throughput_bps, loss FROM results WHERE " + " AND ".join(filters)
            + " ORDER BY run_id, position", fargs):
        if r[0] not in ids:
            continue
        rows.append(HistoryRow(
            run_id=r[0], started_at=runs[order[r[0]]].started_at,
            platform=CONTROL if r[1] else (r[2] or ""), feature=r[3] or "", url=r[4],
            name=r[5] or "", status=r[6], reason=r[7], rtt_ms=r[8], throughput_bps=r[9],
            loss=r[10]))
    rows.sort(key=lambda row: order[row.run_id])
    features: dict[tuple[str, str], dict[int, tuple[str, str]]] = {}
    for run_id, p, f, status, reason in db.execute(
            "SELECT run_id, platform, feature, status, reason FROM features WHERE run_id >= ?",
            (first,)):
        if run_id in ids and platform in (None, p) and feature in (None, f):
            features.setdefault((p, f), {})[run_id] = (status, reason)
    return History(runs, rows, features)


@_damage_is_one_line
def load_run(db: sqlite3.Connection, run_id: int) -> Run:
    """Rebuild a recorded run whole, as `probe run -o run.json` would have written it."""
    row = db.execute("SELECT document FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise HistoryError(f"no run {run_id} in history")
    document = json.loads(row[0])
    document["schema_"] = document.pop("schema")
    run = Run.model_validate(document)
    for control, blob in db.execute(
            "SELECT control, document FROM results WHERE run_id = ? ORDER BY position",
            (run_id,)):
        target = TargetResult.model_validate_json(zlib.decompress(blob))
        (run.network.controls if control else run.targets).append(target)
    return run


@_damage_is_one_line
def run_ids(db: sqlite3.Connection) -> list[int]:
    return [r[0] for r in db.execute("SELECT id FROM runs ORDER BY id")]


# --- export --------------------------------------------------------------------------------


def to_csv(rows: Sequence[HistoryRow]) -> str:
    """One line per target per run; empty cells for facts not measured (pandas reads NaN)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in asdict(row).items()})
    return out.getvalue()


def to_jsonl(rows: Sequence[HistoryRow]) -> str:
    return "".join(json.dumps(asdict(row), ensure_ascii=False) + "\n" for row in rows)


# --- the terminal timeline -----------------------------------------------------------------

CELLS = {"ok": ("●", "green"), "degraded": ("◐", "yellow"), "blocked": ("✕", "red"),
         "inconclusive": ("?", "bright_black")}
ABSENT = ("·", "bright_black")  # not measured in that run (filtered out, interrupted, new target)
SPARKS = "▁▂▃▄▅▆▇█"
MAX_CELLS = 60


def sparkline(values: Sequence[float | None]) -> str:
    """One block per value, scaled between the series' least and greatest; blank when missing."""
    present = [v for v in values if v is not None]
    if not present:
        return ""
    low, high = min(present), max(present)
    span = high - low
    out = []
    for v in values:
        if v is None:
            out.append(" ")
        elif span == 0:
            out.append(SPARKS[3])
        else:
            out.append(SPARKS[min(len(SPARKS) - 1, int((v - low) / span * len(SPARKS)))])
    return "".join(out)


def _rate(bps: float) -> str:
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.1f} {unit}"
    return f"{bps:.0f} bit/s"


def _when(iso: str) -> str:
    return iso[:16].replace("T", " ")


def _changes(verdicts: Sequence[tuple[str, str] | None], runs: Sequence[RunInfo]) -> str:
    """The last change of verdict, with the run it showed up in."""
    previous: tuple[str, str] | None = None
    last = ""
    for verdict, run in zip(verdicts, runs, strict=True):
        if verdict is None:
            continue
        if previous is not None and verdict != previous:
            last = (f"{_verdict_text(previous)} → {_verdict_text(verdict)}"
                    f" at {_when(run.started_at)} (run {run.id})")
        previous = verdict
    return last


def _cells(verdicts: Sequence[tuple[str, str] | None]) -> Any:
    from rich.text import Text

    text = Text()
    for v in verdicts:
        glyph, style = CELLS.get(v[0], ABSENT) if v else ABSENT
        text.append(glyph, style=style)
    return text


def _now(verdict: tuple[str, str] | None) -> Any:
    from rich.text import Text

    if verdict is None:
        return Text("-")
    return Text(_verdict_text(verdict), style=CELLS.get(verdict[0], ABSENT)[1])


def _verdict_text(verdict: tuple[str, str]) -> str:
    return verdict[0] if verdict[0] == "ok" else f"{verdict[0]} {verdict[1]}"


def _latest(series: Sequence[float | None], unit: str) -> str:
    value = next((v for v in reversed(series) if v is not None), None)
    if value is None:
        return ""
    if unit == "ms":
        return f"{value:.2g} ms" if value < 10 else f"{value:.0f} ms"
    return _rate(value) if unit == "rate" else f"{value:.0%}"


def render_timeline(history: History, *, width: int = 120, color: bool = False) -> str:
    """Two sections over the same runs, one column per run: the verdicts of each feature and
    target (with the last change), then sparklines of RTT, throughput and loss per target."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=color,
                      color_system="standard" if color else None, highlight=False)
    if not history.runs:
        console.print("No runs recorded in this period.")
        return buffer.getvalue()
    # one character per run; the rest of the line keeps room for labels and the last change
    runs = history.runs[-max(10, min(MAX_CELLS, width - 90)):]
    interrupted = sum(1 for r in runs if r.interrupted)
    shown = f"last {len(runs)} of {len(history.runs)}" if len(runs) < len(history.runs) else (
        f"{len(runs)}")
    console.print(Text(
        f"{shown} runs, {_when(runs[0].started_at)} → {_when(runs[-1].started_at)} UTC"
        + (f" ({interrupted} interrupted)" if interrupted else ""), style="bold"))

    targets: dict[tuple[str, str, str, str], dict[int, HistoryRow]] = {}
    for row in history.rows:
        targets.setdefault((row.platform, row.feature, row.url, row.name), {})[row.run_id] = row
    groups: dict[tuple[str, str], list[tuple[str, str, str, str]]] = {}
    for key in targets:
        groups.setdefault((key[0], key[1]), []).append(key)

    verdicts = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 1))
    trends = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 1))
    for column in ("feature / target", "runs", "now", "last change"):
        verdicts.add_column(column, no_wrap=column != "last change", overflow="fold")
    for column in ("target", "", "runs", "latest"):
        trends.add_column(column, no_wrap=True)
    for (platform, feature), keys in groups.items():
        label = platform if platform == CONTROL else f"{platform} / {feature}"
        if platform == CONTROL:
            verdicts.add_row(Text(label, style="bold"))
        else:
            by_run = history.features.get((platform, feature), {})
            fv = [by_run.get(r.id) for r in runs]
            latest = next((v for v in reversed(fv) if v), None)
            verdicts.add_row(Text(label, style="bold"), _cells(fv), _now(latest),
                             _changes(fv, runs))
        for key in keys:
            present = [targets[key].get(r.id) for r in runs]
            tv = [(row.status, row.reason) if row else None for row in present]
            latest = next((v for v in reversed(tv) if v), None)
            name = key[3] or key[2]
            verdicts.add_row("  " + name, _cells(tv), _now(latest), _changes(tv, runs))
            first = True
            for metric, unit, series in (
                ("rtt", "ms", [row.rtt_ms if row else None for row in present]),
                ("throughput", "rate", [row.throughput_bps if row else None for row in present]),
                ("loss", "pct", [row.loss if row else None for row in present]),
            ):
                if any(v is not None for v in series):
                    where = "control" if platform == CONTROL else f"{platform}/{feature}"
                    shown_as = f"{where} {name}"
                    trends.add_row(shown_as if first else "", metric, sparkline(series),
                                   _latest(series, unit))
                    first = False
    console.print(verdicts)
    legend = Text()
    for status, (glyph, style) in CELLS.items():
        legend.append(glyph, style=style)
        legend.append(f" {status}  ")
    legend.append(ABSENT[0], style=ABSENT[1])
    legend.append(" not measured")
    console.print(legend)
    if trends.row_count:
        console.print()
        console.print(Text("Trends (lowest ▁ to highest █ of each line)", style="bold"))
        console.print(trends)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"
