"""`probe watch` as a real process: killed with SIGKILL mid-flight, every run it finished is whole
and the database intact; SIGINT mid-run keeps the run, marked interrupted; SIGINT while
sleeping ends at once; `run --repeat` and `history` through the command line."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from listeners import Listener

from probe import history

TARGETS = 120


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


def many_targets(port: int) -> str:
    lines = ["version: 1", "settings: {timeout: 2s, attempts: 1, concurrency: 32}",
             f"controls: [tcp://127.0.0.1:{port}]", "platforms:"]
    for p in range(4):
        lines += [f"  p{p}:", "    features:"]
        for f in range(TARGETS // 4 // 5):
            lines.append(f"      f{f}:")
            lines += [f"        - {{url: 'tcp://127.0.0.1:{port}', name: t{i}}}"
                      for i in range(5)]
    return "\n".join(lines) + "\n"


def probe_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "probe", *args]


def env_for(tmp_path: Path) -> dict[str, str]:
    # any write to the user data directory would land here, where the test can see it
    return {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}


def count_runs(db: Path) -> int:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
            return int(c.execute("SELECT count(*) FROM runs").fetchone()[0])
    except sqlite3.Error:
        return 0


def wait_for_runs(db: Path, n: int, processes: list[subprocess.Popen[bytes]],
                  deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while count_runs(db) < n:
        for p in processes:
            assert p.poll() is None, f"watcher exited early with {p.returncode}"
        assert time.monotonic() < end, "watcher made no runs"
        time.sleep(0.05)


def check_whole(db: Path) -> int:
    """Integrity, and every recorded run complete: all its targets, controls and features."""
    connection = history.connect(db)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
        ids = history.run_ids(connection)
        for run_id in ids:
            targets, interrupted = connection.execute(
                "SELECT targets, interrupted FROM runs WHERE id = ?", (run_id,)).fetchone()
            rows = connection.execute(
                "SELECT count(*) FROM results WHERE run_id = ? AND control = 0",
                (run_id,)).fetchone()[0]
            assert rows == targets
            if not interrupted:
                assert targets == TARGETS, f"run {run_id} has {targets} targets"
                run = history.load_run(connection, run_id)
                assert len(run.network.controls) == 1
                assert len(run.features) == TARGETS // 5
                assert all(t.status == "ok" for t in run.targets)
        return len(ids)
    finally:
        connection.close()


def test_kill_9_never_leaves_half_a_run(listener: Listener, tmp_path: Path) -> None:
    path = tmp_path / "probes.yaml"
    path.write_text(many_targets(listener.port))
    db = tmp_path / "history.sqlite"
    rng = random.Random(7)
    recorded = 0
    for cycle in range(4):
        # two watchers on one file: the second cycle on, they also race each other's writes
        watchers = [subprocess.Popen(
            probe_cmd("watch", "-c", str(path), "--every", "0.01s", "--db", str(db)),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env_for(tmp_path))
            for _ in range(1 if cycle == 0 else 2)]
        try:
            wait_for_runs(db, recorded + 2, watchers)
            for w in watchers:
                time.sleep(rng.uniform(0.0, 0.3))
                w.send_signal(signal.SIGKILL)
        finally:
            for w in watchers:
                if w.poll() is None:
                    w.kill()
                w.wait(timeout=10)
        assert [w.returncode for w in watchers] == [-signal.SIGKILL] * len(watchers)
        whole = check_whole(db)
        assert whole >= recorded + 2
        recorded = whole
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "home").exists()


def slow_catalog(fast_port: int, silent_port: int) -> str:
    # a TLS handshake to a listener that never speaks waits the whole timeout
    return f"""
version: 1
settings: {{timeout: 3s, attempts: 1, concurrency: 1}}
platforms:
  demo:
    features:
      chat: [tcp://127.0.0.1:{fast_port}]
      web: [tls://127.0.0.1:{silent_port}]
"""


def test_sigint_mid_run_keeps_the_run_marked_interrupted(
        listener: Listener, tmp_path: Path) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    path = tmp_path / "probes.yaml"
    path.write_text(slow_catalog(listener.port, silent.getsockname()[1]))
    db = tmp_path / "h.sqlite"
    held: socket.socket | None = None
    try:
        watcher = subprocess.Popen(
            probe_cmd("watch", "-c", str(path), "--every", "1m", "--db", str(db)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_for(tmp_path))
        assert watcher.stderr is not None
        watcher.stderr.readline()  # "a run every ..." : the loop has started
        # One target at a time, in catalog order: the tls target's first connection (its SNI
        # control's) comes once the tcp one is judged; held open, it waits for a ServerHello.
        silent.settimeout(30)
        held = silent.accept()[0]
        started = time.monotonic()
        watcher.send_signal(signal.SIGINT)
        out, _ = watcher.communicate(timeout=30)
    finally:
        silent.close()
        if held is not None:
            held.close()
    assert watcher.returncode == 130
    assert time.monotonic() - started < 2.5, "the run was cancelled, not waited for"
    assert "(interrupted)" in out
    connection = history.connect(db)
    (run_id,) = history.run_ids(connection)
    run = history.load_run(connection, run_id)
    assert run.interrupted
    measured = [(t.feature, t.status) for t in run.targets if t.reason != "target.interrupted"]
    assert measured == [("chat", "ok")]


def test_sigint_while_sleeping_stops_at_once(listener: Listener, tmp_path: Path) -> None:
    path = tmp_path / "probes.yaml"
    path.write_text(slow_catalog(listener.port, listener.port).replace(
        "tls://", "tcp://"))
    db = tmp_path / "h.sqlite"
    watcher = subprocess.Popen(
        probe_cmd("watch", "-c", str(path), "--every", "10m", "--db", str(db)),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env_for(tmp_path))
    assert watcher.stdout is not None
    first = watcher.stdout.readline()
    assert "run 1: 2 ok" in first
    started = time.monotonic()
    watcher.send_signal(signal.SIGTERM)
    watcher.communicate(timeout=30)
    assert watcher.returncode == 143
    assert time.monotonic() - started < 5
    connection = history.connect(db)
    assert history.run_ids(connection) == [1]
    assert not history.load_run(connection, 1).interrupted


def test_repeat_then_history_shows_the_flip(tmp_path: Path) -> None:
    """ok while the listener lives, blocked tcp.reset after it is closed: in the timeline
    and in the CSV, through the real command line."""
    server = Listener()
    path = tmp_path / "probes.yaml"
    path.write_text(f"""
version: 1
settings: {{timeout: 1s, attempts: 2}}
platforms:
  demo:
    features:
      chat: [tcp://127.0.0.1:{server.port}]
""")
    db = tmp_path / "h.sqlite"
    env = env_for(tmp_path)
    first = subprocess.run(probe_cmd("run", "-c", str(path), "--repeat", "2", "--every", "0.1s",
                                     "--db", str(db), "-f", "json"),
                           check=False, capture_output=True, text=True, env=env, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count('"schema": "probe.run/1"') == 2
    server.close()
    second = subprocess.run(probe_cmd("run", "-c", str(path), "--db", str(db), "-f", "csv"),
                            check=False, capture_output=True, text=True, env=env, timeout=60)
    assert second.returncode == 1 and "tcp.reset" in second.stdout
    assert "recorded as run 3" in second.stderr
    table = subprocess.run(probe_cmd("history", "--db", str(db)), check=False, capture_output=True,
                           text=True, env=env, timeout=60)
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if "tcp://127.0.0.1" in line)
    assert "●●✕" in row and "ok → blocked tcp.reset" in row
    exported = subprocess.run(probe_cmd("history", "--db", str(db), "-f", "csv",
                                        "--feature", "chat"),
                              check=False, capture_output=True, text=True, env=env, timeout=60)
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert [(r["run_id"], r["status"], r["reason"]) for r in rows] == [
        ("1", "ok", "ok"), ("2", "ok", "ok"), ("3", "blocked", "tcp.reset")]
    assert not (tmp_path / "xdg").exists()


def test_history_command_errors(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    missing = subprocess.run(probe_cmd("history", "--db", str(tmp_path / "none.sqlite")),
                             check=False, capture_output=True, text=True, env=env, timeout=60)
    assert missing.returncode == 2 and "no history yet" in missing.stderr
    assert not (tmp_path / "none.sqlite").exists()
    history.connect(tmp_path / "h.sqlite").close()
    bad = subprocess.run(probe_cmd("history", "--db", str(tmp_path / "h.sqlite"), "--since",
                                   "whenever"), check=False, capture_output=True, text=True, env=env,
                         timeout=60)
    assert bad.returncode == 2 and "--since" in bad.stderr and "Traceback" not in bad.stderr
    path = tmp_path / "probes.yaml"
    path.write_text("version: 1\nplatforms: {a: {features: {b: [tcp://127.0.0.1:9]}}}\n")
    every = subprocess.run(probe_cmd("watch", "-c", str(path), "--every", "soon", "--db",
                                     str(tmp_path / "h.sqlite")),
                           check=False, capture_output=True, text=True, env=env, timeout=60)
    assert every.returncode == 2 and "--every" in every.stderr
    both = subprocess.run(probe_cmd("run", "-c", str(path), "--repeat", "2", "-o",
                                    str(tmp_path / "x.json")),
                          check=False, capture_output=True, text=True, env=env, timeout=60)
    assert both.returncode == 2 and "--repeat" in both.stderr


MID_WRITE = """
import sys, time
sys.path[:0] = [{tests!r}, {tests!r} + '/..']
from test_history import ok_run
from probe import history
history.record_to({db!r}, ok_run())
real, calls = history.metrics_of, []
def slow(target):
    calls.append(target)
    if len(calls) == 3:  # inside the transaction, with the run's own row already inserted
        print("writing", flush=True)
        time.sleep(60)
    return real(target)
history.metrics_of = slow
history.record_to({db!r}, ok_run())
"""


def test_kill_9_inside_the_write_transaction(tmp_path: Path) -> None:
    """Deterministic: SIGKILL lands while a run is half inserted; the run is absent, the
    one before it whole, the file intact."""
    db = tmp_path / "h.sqlite"
    code = MID_WRITE.format(tests=str(Path(__file__).parent), db=str(db))
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "writing"
        assert (tmp_path / "h.sqlite-wal").exists()
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait(timeout=10)
    connection = history.connect(db)
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert history.run_ids(connection) == [1]
    assert connection.execute("SELECT count(*) FROM results").fetchone()[0] == 4
    assert len(history.load_run(connection, 1).targets) == 3
    history.record(connection, history.load_run(connection, 1))  # and it takes new runs
    assert history.run_ids(connection) == [1, 2]
