"""The history store: round trips, metrics from phases, export, filters, concurrent writers,
and a real loopback target that flips from ok to blocked between two recorded runs."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import socket
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from builders import Facts, facts

from probe import catalog, history
from probe.errors import HistoryError
from probe.metrics import metrics_of
from probe.observations import Observation, Sample
from probe.results import Run, TargetResult
from probe.runner import Runner

CATALOG = """
version: 1
controls: [tcp://127.0.0.1:9]
platforms:
  demo:
    name: Demo
    features:
      chat: [tcp://127.0.0.1:1234]
      calls: [stun://127.0.0.1:3478]
      web:
        - url: https://127.0.0.1:8443/
          name: site
"""


def judged(observations: dict[str, Observation], text: str = CATALOG) -> Run:
    """A Run judged by the real classifier from hand-built observations (the store must not
    care where they came from)."""
    r = Runner(loaded=catalog.loads(text))
    for job in r.jobs:
        r.add(job, observations[job.target.url])
    return r.finish()


def obs(*samples: dict[str, Facts]) -> Observation:
    return Observation(samples=[Sample(phases=dict(s)) for s in samples])


def ok_run(rtt: float = 2.0) -> Run:
    return judged({
        "tcp://127.0.0.1:9": obs({"tcp": facts(ok=True, ms=1.0)}),
        "tcp://127.0.0.1:1234": obs(*({"tcp": facts(ok=True, ms=rtt + i, rtt_ms=rtt)}
                                      for i in range(3))),
        "stun://127.0.0.1:3478": obs({"stun": facts(ok=True, ms=30.0, sent=10, lost=1,
                                                    rtt_ms=[4.0, 5.0, 6.0])}),
        "https://127.0.0.1:8443/": obs(*({"tcp": facts(ok=True, ms=1.0),
                                          "tls": facts(ok=True, ms=3.0),
                                          "http": facts(ok=True, ms=9.0, status=200,
                                                        bytes=1000, throughput=8_000_000 + i)}
                                         for i in range(3))),
    })


def blocked_run() -> Run:
    refused = facts(ok=False, ms=0.1, failure="connection_refused", error="refused")
    run = ok_run()
    blocked = judged({
        "tcp://127.0.0.1:9": obs({"tcp": facts(ok=True, ms=1.0)}),
        "tcp://127.0.0.1:1234": obs({"tcp": refused}, {"tcp": refused}),
        "stun://127.0.0.1:3478": obs({"stun": facts(ok=False, ms=5000.0, failure="timeout",
                                                    sent=3, lost=3)}),
        "https://127.0.0.1:8443/": obs({"tcp": facts(ok=True, ms=1.0),
                                        "tls": facts(ok=False, ms=5000.0, failure="timeout")}),
    })
    assert run.targets[0].status == "ok" and blocked.targets[0].reason == "tcp.reset"
    return blocked


# --- metrics_of ----------------------------------------------------------------------------


def target(*samples: dict[str, Facts]) -> TargetResult:
    return TargetResult(platform="p", feature="f", url="tcp://127.0.0.1:1", status="ok",
                        reason="ok", observation=obs(*samples))


@pytest.mark.parametrize(("samples", "expected"), [
    ((), (None, None, None)),
    (({"tcp": facts(ok=True, ms=10.0)}, {"tcp": facts(ok=True, ms=30.0)}), (20.0, None, None)),
    # the kernel's RTT wins over wall time when the layer recorded it
    (({"tcp": facts(ok=True, ms=10.0, rtt_ms=0.5)},), (0.5, None, None)),
    # a failed connect's duration is no round trip
    (({"tcp": facts(ok=False, ms=5000.0, failure="timeout")},), (None, None, None)),
    (({"dns": facts(ok=True, ms=7.0)},), (7.0, None, None)),
    (({"dns": facts(ok=True, ms=7.0), "tcp": facts(ok=True, ms=3.0)},), (3.0, None, None)),
    (({"tcp": facts(ok=True, ms=1.0), "http": facts(ok=True, ms=100.0, bytes=1000)},),
     (1.0, 80_000.0, None)),
    (({"tcp": facts(ok=True, ms=1.0), "http": facts(ok=True, ms=1.6, throughput_bps=5e6, bytes=1000)},),
     (1.0, 5e6, None)),
    # what the http layer records: `throughput` (bit/s), `bytes` over `transfer_ms`
    (({"tcp": facts(ok=True, ms=1.0), "http": facts(ok=True, ms=9.0, throughput=4e6, bytes=4500)},),
     (1.0, 4e6, None)),
    (({"tcp": facts(ok=True, ms=1.0),
       "http": facts(ok=True, ms=200.0, bytes=1000, transfer_ms=100.0)},), (1.0, 80_000, None)),
    # a stalled transfer is no throughput
    (({"tcp": facts(ok=True, ms=1.0), "http": facts(ok=False, failure="stall", throughput=8.0)},),
     (1.0, None, None)),
    # quic: the first answer to the Initial is one round trip; the handshake is more
    (({"quic": facts(ok=True, ms=30.0, ms_first_packet=11.0)},), (11.0, None, None)),
    (({"turn": facts(ok=True, ms=12.0, error_code=401)},), (12.0, None, None)),
    (({"stun": facts(ok=True, ms=9.0, sent=10, lost=3, rtt_ms=[1.0, 2.0, 9.0])},),
     (2.0, None, 0.3)),
    (({"stun": facts(ok=True, ms=9.0, sent=4, answered=3)},), (9.0, None, 0.25)),
    (({"stun": facts(ok=False, failure="timeout", sent=5, lost=5)},), (None, None, 1.0)),
    # a key no layer writes (an older name, a later version's) is kept, and not read
    (({"stun": facts(ok=True, sent=4, lost=None, rtt_median_ms=None, received=3)},),
     (None, None, None)),
])
def test_metrics_of(samples: tuple[dict[str, Facts], ...],
                    expected: tuple[float | None, float | None, float | None]) -> None:
    assert metrics_of(target(*samples)) == expected


# --- store ---------------------------------------------------------------------------------


def test_round_trip_keeps_the_whole_run(tmp_path: Path) -> None:
    db = history.connect(tmp_path / "h.sqlite")
    runs = [ok_run(), blocked_run(), ok_run(rtt=4.0)]
    ids = [history.record(db, r) for r in runs]
    assert ids == history.run_ids(db)
    for run_id, run in zip(ids, runs, strict=True):
        assert history.load_run(db, run_id).to_json() == run.to_json()
    h = history.query(db)
    assert [r.id for r in h.runs] == ids
    chat = [r for r in h.rows if r.feature == "chat"]
    assert [(r.status, r.reason) for r in chat] == [
        ("ok", "ok"), ("blocked", "tcp.reset"), ("ok", "ok")]
    assert [r.rtt_ms for r in chat] == [2.0, None, 4.0]
    web = [r for r in h.rows if r.feature == "web"]
    assert web[0].name == "site" and web[0].throughput_bps == 8e6 + 1
    calls = [r for r in h.rows if r.feature == "calls"]
    assert calls[0].loss == pytest.approx(0.1) and calls[1].loss == 1.0
    controls = [r for r in h.rows if r.platform == history.CONTROL]
    assert len(controls) == 3 and controls[0].feature == ""
    assert h.features[("demo", "chat")][ids[1]] == ("blocked", "tcp.reset")
    db.close()


def test_reopen_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    history.record_to(path, ok_run())
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    db.execute("UPDATE schema_version SET version = 99")
    db.commit()
    db.close()
    with pytest.raises(HistoryError, match="newer probe"):
        history.connect(path)


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    path.write_bytes(b"this is not sqlite at all, just some text" * 50)
    with pytest.raises(HistoryError, match="not a usable history database"):
        history.connect(path)
    with pytest.raises(HistoryError, match="no history yet"):
        history.connect(tmp_path / "missing.sqlite", create=False)


def test_a_failing_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = history.connect(tmp_path / "h.sqlite")
    history.record(db, ok_run())
    calls = 0

    def broken(t: TargetResult) -> tuple[float | None, float | None, float | None]:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("disk on fire")
        return None, None, None

    monkeypatch.setattr(history, "metrics_of", broken)
    with pytest.raises(RuntimeError):
        history.record(db, blocked_run())
    assert history.run_ids(db) == [1]
    assert db.execute("SELECT count(*) FROM results").fetchone()[0] == 4
    assert db.execute("SELECT count(*) FROM features").fetchone()[0] == 3


def test_filters_and_since(tmp_path: Path) -> None:
    db = history.connect(tmp_path / "h.sqlite")
    old = ok_run().model_copy(update={"started_at": "2020-01-01T00:00:00Z"})
    history.record(db, old)
    history.record(db, blocked_run())
    assert len(history.query(db).runs) == 2
    recent = history.query(db, since=history.parse_since("24h"))
    assert len(recent.runs) == 1 and {r.run_id for r in recent.rows} == {2}
    assert len(history.query(db, since=history.parse_since("2019-12-31")).runs) == 2
    only = history.query(db, platform="demo", feature="chat")
    assert {(r.platform, r.feature) for r in only.rows} == {("demo", "chat")}
    assert set(only.features) == {("demo", "chat")}
    assert {r.platform for r in history.query(db, platform=history.CONTROL).rows} == {
        history.CONTROL}
    assert [r.id for r in history.query(db, last=1).runs] == [2]
    with pytest.raises(HistoryError):
        history.parse_since("yesterday-ish")


def test_csv_and_jsonl_export(tmp_path: Path) -> None:
    db = history.connect(tmp_path / "h.sqlite")
    history.record(db, ok_run())
    history.record(db, blocked_run())
    rows = history.query(db).rows
    table = list(csv.DictReader(io.StringIO(history.to_csv(rows))))
    assert list(table[0]) == list(history.COLUMNS) == [
        "run_id", "started_at", "platform", "feature", "url", "name", "status", "reason",
        "rtt_ms", "throughput_bps", "loss"]
    assert len(table) == 2 * 4
    chat = [r for r in table if r["feature"] == "chat"]
    assert [(r["status"], r["reason"], r["rtt_ms"]) for r in chat] == [
        ("ok", "ok", "2.0"), ("blocked", "tcp.reset", "")]
    lines = [json.loads(line) for line in history.to_jsonl(rows).splitlines()]
    assert len(lines) == 8 and lines[1]["rtt_ms"] == 2.0 and lines[5]["rtt_ms"] is None


def test_csv_reads_as_data_tools_read_it(tmp_path: Path) -> None:
    """The CSV is a table with one header, numeric cells that parse as numbers and empty cells
    for what was not measured (what pandas and spreadsheets expect), read with the csv module."""
    import csv

    db = history.connect(tmp_path / "h.sqlite")
    history.record(db, ok_run())
    history.record(db, blocked_run())
    rows = list(csv.DictReader(io.StringIO(history.to_csv(history.query(db).rows))))
    rtts = [row["rtt_ms"] for row in rows]
    assert all(float(v) >= 0 for v in rtts if v) and "" in rtts
    assert sum(1 for row in rows if row["status"] == "blocked") == 3
    assert len({len(row) for row in rows}) == 1  # every row has every column


def test_timeline_shows_cells_sparklines_and_changes(tmp_path: Path) -> None:
    db = history.connect(tmp_path / "h.sqlite")
    for run in (ok_run(1.0), ok_run(5.0), blocked_run(), ok_run(9.0)):
        history.record(db, run)
    text = history.render_timeline(history.query(db), width=160)
    lines = text.splitlines()
    chat, chat_rtt = (line for line in lines if "tcp://127.0.0.1:1234" in line)
    assert "●●✕●" in chat
    assert "blocked tcp.reset → ok" in chat
    assert "rtt" in chat_rtt and "▁▅ █" in chat_rtt  # RTT 1, 5, (none), 9
    loss = lines[lines.index(next(line for line in lines if "demo/calls" in line)) + 1]
    assert "loss" in loss and "▁▁█▁" in loss and "10%" in loss
    rate = next(line for line in lines if "throughput" in line and "site" not in line)
    assert "▄▄ ▄" in rate and "8.0 Mbit/s" in rate
    assert "demo / chat" in text and "4 runs" in text
    colored = history.render_timeline(history.query(db), width=160, color=True)
    assert "\x1b[" in colored
    assert "No runs" in history.render_timeline(history.query(db, since=4e9))


def test_timeline_keeps_to_the_latest_runs_and_marks_interrupted(tmp_path: Path) -> None:
    db = history.connect(tmp_path / "h.sqlite")
    runs = [ok_run() for _ in range(history.MAX_CELLS + 5)]
    runs[-1] = runs[-1].model_copy(update={"interrupted": True, "targets": runs[-1].targets[:1]})
    for run in runs:
        history.record(db, run)
    text = history.render_timeline(history.query(db), width=200)
    assert f"last {history.MAX_CELLS} of {history.MAX_CELLS + 5} runs" in text
    assert "(1 interrupted)" in text
    calls = next(line for line in text.splitlines() if "stun://" in line)
    assert max(len(line) for line in text.splitlines()) <= 200
    narrow = history.render_timeline(history.query(db), width=100)
    assert "last 10 of" in narrow
    assert "●" * (history.MAX_CELLS - 1) + "·" in calls  # not measured in the interrupted run


def test_sparkline() -> None:
    assert history.sparkline([]) == ""
    assert history.sparkline([None, None]) == ""
    assert history.sparkline([1.0, 1.0]) == "▄▄"
    assert history.sparkline([0.0, None, 7.0, 3.5]) == "▁ █▅"


# --- concurrent writers --------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys
    sys.path[:0] = [{tests!r}, {tests!r} + '/..']
    from test_history import ok_run, blocked_run
    from probe import history
    for i in range({n}):
        history.record_to({db!r}, ok_run() if i % 2 else blocked_run())
""")


def test_two_concurrent_writers_never_corrupt(tmp_path: Path) -> None:
    db_path = str(tmp_path / "h.sqlite")
    n = 40
    code = WRITER.format(tests=str(Path(__file__).parent), n=n, db=db_path)
    writers = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    errors = [w.communicate(timeout=120)[1] for w in writers]
    assert [w.returncode for w in writers] == [0, 0], errors
    db = history.connect(db_path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ids = history.run_ids(db)
    assert len(ids) == 2 * n
    per_run = dict(db.execute("SELECT run_id, count(*) FROM results GROUP BY run_id"))
    assert set(per_run.values()) == {4}, "every run has its control and its 3 targets"
    for run_id in ids:
        assert len(history.load_run(db, run_id).targets) == 3


# --- a real target flips -------------------------------------------------------------------


def run_catalog(text: str) -> Run:
    async def go() -> Run:
        r = Runner(loaded=catalog.loads(text))
        await r.run()
        return r.finish()

    return asyncio.run(go())


def test_a_closed_listener_shows_as_a_change(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    text = f"""
version: 1
settings: {{timeout: 1s, attempts: 2}}
platforms:
  demo:
    features:
      chat: [tcp://127.0.0.1:{port}]
"""
    db = history.connect(tmp_path / "h.sqlite")
    history.record(db, run_catalog(text))
    listener.close()
    history.record(db, run_catalog(text))
    h = history.query(db)
    assert [(r.status, r.reason) for r in h.rows] == [("ok", "ok"), ("blocked", "tcp.reset")]
    assert h.rows[0].rtt_ms is not None and h.rows[1].rtt_ms is None
    timeline = history.render_timeline(h, width=160)
    assert "●✕" in timeline and "ok → blocked tcp.reset" in timeline
    table = list(csv.DictReader(io.StringIO(history.to_csv(h.rows))))
    assert [r["status"] for r in table] == ["ok", "blocked"]
    assert [r["reason"] for r in table] == ["ok", "tcp.reset"]


def test_real_https_transfer_gives_rtt_and_throughput(tmp_path: Path) -> None:
    """The facts the real tcp/tls/http layers record are the ones the store reads."""
    from probe.mock.certs import TestCA
    from probe.mock.tls import HTTPSServer

    ca = TestCA()
    ca_file = ca.write_ca(tmp_path / "ca.pem")

    async def go() -> Run:
        server = HTTPSServer("ok", ca=ca, name="mock.test")
        await server.start()
        try:
            text = f"""
version: 1
settings: {{timeout: 2s, attempts: 2, ca_file: {ca_file}}}
platforms:
  demo:
    features:
      web:
        - {{url: 'https://mock.test:{server.port}/1mib', address: 127.0.0.1}}
"""
            r = Runner(loaded=catalog.loads(text))
            await r.run()
            return r.finish()
        finally:
            await server.stop()

    run = asyncio.run(go())
    assert run.targets[0].status == "ok", run.targets[0].detail
    db = history.connect(tmp_path / "h.sqlite")
    history.record(db, run)
    [row] = history.query(db).rows
    assert row.rtt_ms is not None and 0 <= row.rtt_ms < 100
    assert row.throughput_bps is not None and row.throughput_bps > 1e6
    assert row.loss is None


# --- bad stores: read commands never write; a foreign or damaged store is one line, exit 2 ---


def history_cli(path: Path, *args: str) -> tuple[int, str, str]:
    """`probe history --db path ...` through the CLI (its one-line errors and exit codes)."""
    from typer.testing import CliRunner

    from probe.cli import app

    result = CliRunner().invoke(app, ["history", "--db", str(path), *args])
    return result.exit_code, result.stdout, result.stderr


def one_line_error(code: int, stderr: str, *words: str) -> None:
    assert code == 2, stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    for word in words:
        assert word in stderr, stderr


def files_in(folder: Path) -> dict[str, bytes]:
    """The folder's files and their bytes, but SQLite's own -wal and -shm files: any reader of a
    store in WAL mode (probe's are) makes them, the store itself stays as it was."""
    return {p.name: p.read_bytes() for p in folder.iterdir()
            if not p.name.endswith(("-wal", "-shm"))}


def another_programs_database(path: Path) -> None:
    """An SQLite file of someone else's, in SQLite's default (rollback journal) mode."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE contacts (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("INSERT INTO contacts (name) VALUES ('alice'), ('bob')")
    db.commit()
    db.close()


def test_read_command_leaves_another_programs_database_alone(tmp_path: Path) -> None:
    path = tmp_path / "contacts.sqlite"
    another_programs_database(path)
    before = files_in(tmp_path)
    code, stdout, stderr = history_cli(path)
    one_line_error(code, stderr, str(path), "not a probe history")
    assert stdout == ""
    # no tables written, no switch to WAL: not even SQLite's side files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["contacts.sqlite"]
    assert files_in(tmp_path) == before
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["contacts"]
    db.close()


def test_recording_into_another_programs_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "contacts.sqlite"
    another_programs_database(path)
    before = files_in(tmp_path)
    with pytest.raises(HistoryError, match="not a probe history"):
        history.record_to(path, ok_run())
    assert files_in(tmp_path) == before


def test_an_empty_file_is_no_history_and_stays_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite"
    path.touch()
    code, stdout, stderr = history_cli(path)
    one_line_error(code, stderr, "no history yet")
    assert files_in(tmp_path) == {"empty.sqlite": b""}  # no schema written
    # a command that records takes an empty file as a new store
    history.record_to(path, ok_run())
    code, stdout, stderr = history_cli(path, "--format", "csv")
    assert code == 0 and stdout.count("\n") == 1 + 4, stderr  # a control, three targets


def test_a_store_with_probes_tables_missing_a_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    history.record_to(path, ok_run())
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE results DROP COLUMN reason")
    db.commit()
    db.close()
    before = files_in(tmp_path)
    code, _, stderr = history_cli(path)
    one_line_error(code, stderr, "not a probe history", "results", "reason")
    assert files_in(tmp_path) == before


def corrupt(path: Path, *, from_page: int) -> None:
    """Overwrite every page of the file from `from_page` (1-based) with junk."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    for start in range((from_page - 1) * page, len(data), page):
        data[start:start + page] = bytes((i * 37 + 11) % 256 for i in range(page))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("from_page", [1, 2, 3])
def test_a_damaged_store_is_one_line(tmp_path: Path, from_page: int) -> None:
    path = tmp_path / "h.sqlite"
    for _ in range(3):
        history.record_to(path, ok_run())
    corrupt(path, from_page=from_page)
    before = files_in(tmp_path)
    for args in ((), ("--format", "csv"), ("--platform", "demo"), ("--last", "1")):
        code, stdout, stderr = history_cli(path, *args)
        one_line_error(code, stderr, str(path))
        assert stdout == ""
    assert files_in(tmp_path) == before
    with pytest.raises(HistoryError, match=str(path)):
        history.record_to(path, ok_run())


def test_reading_does_not_write_a_probe_store(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    history.record_to(path, ok_run())
    before = path.read_bytes()
    code, stdout, stderr = history_cli(path, "--format", "jsonl")
    assert code == 0 and len(stdout.splitlines()) == 4, stderr
    assert path.read_bytes() == before
