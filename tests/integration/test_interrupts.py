"""Interrupting `probe run` mid-run: SIGINT/SIGTERM keep what was finished and exit promptly and
cleanly; kill -9 leaves a JSONL file valid up to its last full line. Result files are never
overwritten without --force and never left half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from listeners import Listener

from probe.mock.certs import TestCA
from probe.mock.hostile import Background, HostileServer
from probe.results import write_atomic

NAME = "mock.test"
FAST = 3  # targets that finish at once; the rest wait out a 5 s timeout, three times
SLOW = 40
CONCURRENCY = FAST + 1
# Warnings that mean a task, socket or file was left behind, or an error escaped.
UNCLEAN = ("Traceback", "Task was destroyed", "unclosed", "ResourceWarning", "Exception ignored",
           "never retrieved", "was never awaited")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Listener]]:
    """A catalog of FAST quick https targets then SLOW tls ones that a listener holds silent
    (whose count of connections tells when the quick targets are done)."""
    folder = tmp_path_factory.mktemp("interrupts")
    ca = TestCA()
    ca_file = str(ca.write_ca(folder / "ca.pem"))
    holding = Listener(hold=True)
    with Background(HostileServer("echo_address", ca=ca, name=NAME)) as (quick,):
        targets = [{"url": f"https://{NAME}:{quick.port}/", "address": "127.0.0.1",
                    "name": f"quick{i}"} for i in range(FAST)]
        targets += [{"url": f"tls://{NAME}:{holding.port}", "address": "127.0.0.1",
                     "name": f"slow{i}"} for i in range(SLOW)]
        document = {"version": 1,
                    "settings": {"timeout": "5s", "attempts": 3, "concurrency": CONCURRENCY,
                                 "ca_file": ca_file},
                    "platforms": {"p": {"features": {"f": targets}}}}
        catalog = folder / "slow.yaml"
        catalog.write_text(json.dumps(document))
        try:
            yield catalog, holding
        finally:
            holding.close()


def start_probe(catalog: Path, output: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONWARNINGS": "error::ResourceWarning"}
    return subprocess.Popen(
        [sys.executable, "-X", "dev", "-m", "probe", "run", "-c", str(catalog), "-f",
         output.suffix[1:], "-o", str(output)],  # -o's format must agree with -f
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str],
             timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"probe exited early ({proc.returncode}):\n{err[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            proc.communicate()
            pytest.fail("the quick targets never finished")
        time.sleep(0.05)


def quick_done(holding: Listener) -> Callable[[], bool]:
    """True once this run's quick targets are judged. A worker takes its next target only after
    judging the last, and a slow one outlasts the test, so once CONCURRENCY slow targets have
    connected (besides the one control handshake to their address) every quick one is done."""
    before = holding.accepted
    return lambda: holding.accepted - before >= CONCURRENCY + 1


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_keeps_finished_targets_and_exits_cleanly(
    world: tuple[Path, Listener], tmp_path: Path, suffix: str, signum: int, code: int
) -> None:
    catalog, holding = world
    output = tmp_path / f"out{suffix}"
    done = quick_done(holding)
    proc = start_probe(catalog, output)
    wait_for(done, proc)
    sent = time.monotonic()
    proc.send_signal(signum)
    try:
        stdout, stderr = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the probe did not exit within 10 s of the signal")
    took = time.monotonic() - sent
    print(f"\n{signal.Signals(signum).name} -> exit {proc.returncode} in {took:.2f} s")
    assert proc.returncode == code, stderr[-3000:]
    assert took < 3.0, "exit waited for work in flight (a slow target takes 15 s)"
    for word in UNCLEAN:
        assert word not in stderr, stderr[-3000:]
    if suffix == ".json":
        printed = json.loads(stdout)
        assert printed["schema"] == "probe.run/1" and printed["interrupted"] is True
        targets = printed["targets"]
        saved = json.loads(output.read_text())
        assert saved["schema"] == "probe.run/1" and saved["interrupted"] is True
        assert saved["targets"] == targets
    else:
        text = output.read_text()
        # the file's records, as printed (the file has the targets in the order they finished)
        assert text.endswith("\n") and sorted(text.splitlines()) == sorted(stdout.splitlines())
        records = [json.loads(line) for line in text.splitlines()]
        assert records[0]["record"] == "run" and records[-1]["record"] == "end"
        assert records[-1]["interrupted"] is True
        targets = [r for r in records if "record" not in r]
    measured = [t["name"] for t in targets if t["reason"] != "target.interrupted"]
    assert {f"quick{i}" for i in range(FAST)} <= set(measured)
    assert len(measured) < FAST + SLOW
    # the targets not measured are named, not left out
    assert len(targets) == FAST + SLOW
    assert {t["status"] for t in targets if t["name"] not in measured} == {"inconclusive"}


def test_kill_9_leaves_jsonl_valid_up_to_its_last_full_line(
    world: tuple[Path, Listener], tmp_path: Path
) -> None:
    catalog, _ = world
    output = tmp_path / "out.jsonl"
    proc = start_probe(catalog, output)

    def lines() -> int:
        return output.read_text().count("\n") if output.exists() else 0

    wait_for(lambda: lines() >= FAST, proc)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    text = output.read_text()
    whole = text[: text.rfind("\n") + 1]
    parsed = [json.loads(line) for line in whole.splitlines()]
    assert parsed[0]["record"] == "run"
    targets = [t for t in parsed if "record" not in t]
    assert len(targets) >= FAST and all(t["url"] for t in targets)
    assert parsed[-1].get("record") != "end"  # cut: no end record, and reading says so
    from probe.results import read_run

    assert read_run(output).interrupted


def test_existing_output_needs_force(world: tuple[Path, Listener],
                                     tmp_path: Path) -> None:
    catalog, _ = world
    output = tmp_path / "kept.json"
    output.write_text("precious")
    done = subprocess.run([sys.executable, "-m", "probe", "run", "-c", str(catalog), "-o",
                           str(output)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "--force" in done.stderr and "Traceback" not in done.stderr
    assert output.read_text() == "precious"


def test_write_atomic_failing_midway_leaves_the_old_file_and_no_litter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "run.json"
    write_atomic(target, '{"schema": "probe.run/1", "old": true}')
    real_fsync = os.fsync

    def crash(fd: int) -> None:  # the disk fills, or the process is killed, mid-write
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError):
        write_atomic(target, '{"schema": "probe.run/1", "new": ' + "1" * 100_000)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert json.loads(target.read_text()) == {"schema": "probe.run/1", "old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temporary file left
    write_atomic(tmp_path / "fresh.json", "{}")
    assert (tmp_path / "fresh.json").read_text() == "{}"


def test_write_atomic_killed_midway_never_leaves_half_a_file(tmp_path: Path) -> None:
    """A process killed while writing a big run: the destination is absent or whole."""
    target = tmp_path / "run.json"
    script = (
        "import sys, json; from probe.results import write_atomic\n"
        "doc = json.dumps({'targets': ['x' * 1000] * 200_000})\n"
        "print('writing', flush=True)\n"
        "while True: write_atomic(sys.argv[1], doc)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "writing\n"
    time.sleep(0.5)
    proc.kill()
    proc.communicate()
    if target.exists():
        assert len(json.loads(target.read_text())["targets"]) == 200_000
    # What the killed writer left behind goes with the next write to the same file; a live
    # writer's temporary file (here our own process's, faked) is left alone.
    alive = tmp_path / f".run.json.{os.getppid()}.abc.tmp"
    alive.write_text("in progress")
    write_atomic(target, "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name, "run.json"]


def test_ctrl_c_while_the_cli_loads_is_quiet() -> None:
    """Ctrl-C before the CLI's modules are in (typer, rich, pydantic take a few hundred ms):
    exit 130 with one line, never a traceback. The interrupt is raised where it would land,
    in the import of probe.cli, through the same entry point the `probe` command uses."""
    script = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def interrupted(name, *args, **kwargs):\n"
        "    if name == 'probe.cli':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = interrupted\n"
        "sys.argv[0] = 'probe'\n"
        "from probe.__main__ import main\n"
        "main()\n")
    done = subprocess.run([sys.executable, "-c", script, "--help"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 130, done.stderr
    assert done.stderr == "probe: interrupted\n"
    assert done.stdout == ""
