"""Big runs against the host's limits: concurrency above the open-file limit is capped with a note
(no EMFILE), and 10,000 targets run to completion."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from probe.mock.hostile import Background
from probe.mock.tcp import TCPServer


@pytest.fixture(scope="module")
def listener() -> Iterator[TCPServer]:
    with Background(TCPServer("ok")) as (server,):
        yield server


def write_catalog(folder: Path, port: int, count: int, **settings: object) -> Path:
    targets = [{"url": f"tcp://127.0.0.1:{port}", "name": f"t{i}"} for i in range(count)]
    document = {"version": 1, "settings": {"timeout": "5s", "attempts": 1, **settings},
                "platforms": {"p": {"features": {"f": targets}}}}
    path = folder / f"{count}.yaml"
    path.write_text(json.dumps(document))
    return path


def probe(*args: str, nofile: int | None = None, timeout: float = 120) -> tuple[
        subprocess.CompletedProcess[str], float]:
    def limit() -> None:  # soft = hard: the probe cannot raise it, it must live within it
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "probe", "run", *args], capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit, check=False)
    return done, time.monotonic() - start


def test_concurrency_above_the_open_file_limit_is_capped(listener: TCPServer,
                                                         tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path, listener.port, 2000)
    done, seconds = probe("-c", str(catalog), "--concurrency", "5000", "-f", "csv",
                          nofile=256)
    print(f"\n2000 targets, concurrency 5000 asked, 256 files allowed: {seconds:.1f} s")
    assert "Traceback" not in done.stderr and "Too many open files" not in done.stdout
    assert "concurrency capped at 48 by the open-file limit (256)" in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr[-2000:]
    rows = done.stdout.splitlines()[1:]
    assert len(rows) == 2000 and all(",ok,ok," in row for row in rows), rows[:3]


def test_without_the_cap_emfile_is_untestable_never_blocked(listener: TCPServer,
                                                            tmp_path: Path) -> None:
    """Without the cap the same kind of run does run out of files (so the test above can fail);
    a target that hit our own limit is inconclusive, never `blocked`."""
    catalog = write_catalog(tmp_path, listener.port, 600, concurrency=500)
    script = ("import sys; from probe import session; "
              "session.usable_concurrency = lambda wanted: (wanted, None); "
              "from probe.__main__ import main; sys.argv[0] = 'probe'; main()")
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script, "run", "-c", str(catalog), "-f", "csv"],
        capture_output=True, text=True, timeout=120, check=False,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)))
    rows = done.stdout.splitlines()[1:]
    failed = [row for row in rows if ",ok,ok," not in row]
    print(f"\nuncapped, 64 files allowed: exit {done.returncode} in "
          f"{time.monotonic() - start:.1f} s, {len(failed)} of {len(rows)} targets out of files")
    assert "Traceback" not in done.stderr
    assert len(rows) == 600 and failed
    for row in failed:
        assert ",inconclusive,target.untestable," in row and "ran out of file descriptors" in row, row


def test_ten_thousand_targets_run_to_completion(listener: TCPServer, tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path, listener.port, 10_000)
    output = tmp_path / "big.jsonl"
    done, seconds = probe("-c", str(catalog), "--concurrency", "256", "-f", "jsonl",
                          "-o", str(output), timeout=300)
    print(f"\n10,000 tcp targets at concurrency 256: {seconds:.1f} s wall "
          f"({10_000 / seconds:.0f} targets/s)")
    assert done.returncode == 0, done.stderr[-2000:]
    # the file's records, as printed (the file has the targets in the order they finished)
    assert sorted(output.read_text().splitlines()) == sorted(done.stdout.splitlines())
    targets = [t for t in map(json.loads, done.stdout.splitlines()) if "record" not in t]
    assert len(targets) == 10_000 and {t["reason"] for t in targets} == {"ok"}
    assert {t["name"] for t in targets} == {f"t{i}" for i in range(10_000)}
