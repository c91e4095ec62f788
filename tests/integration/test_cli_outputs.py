"""The probe command as a user runs it, in a subprocess, against loopback only: every output
path checked before the first packet, a file that cannot be written losing no result, `-o`
following `-f`, the JSONL records (a file cut by SIGTERM included), `probe mock`'s start-up
errors, the demo, and the README's mock table and CI example.

Each target is a TCP listener of the test that never accepts: the kernel completes the
connect (tcp:// is ok) and a TLS ClientHello waits unanswered (tls:// times out). A refused
command must leave the listener's queue empty: no packet was sent.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from probe.results import read_run

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def probe(*args: str, cwd: Path, preexec: Callable[[], None] | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "probe", *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=timeout, preexec_fn=preexec,
                          check=False)


def env() -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if k != "PROBE_DEBUG"}
    return {**values, "COLUMNS": "160", "PYTHONPATH": str(ROOT)}


def one_line(stderr: str) -> str:
    """The only line on stderr, with no traceback."""
    assert "Traceback" not in stderr, stderr
    assert stderr.count("\n") == 1 and stderr.endswith("\n"), stderr
    return stderr.strip()



def nothing_connected(sock: socket.socket) -> bool:
    try:
        sock.accept()[0].close()
    except BlockingIOError:
        return True
    return False


def catalog(folder: Path, sock: socket.socket, timeout: str = "1s") -> Path:
    """A control and a tcp:// target that work, a tls:// target that times out; DNS, if
    anything asked it, at a loopback port where nothing answers."""
    port = sock.getsockname()[1]
    path = folder / "catalog.yaml"
    path.write_text(f"""version: 1
settings: {{timeout: {timeout}, attempts: 1, resolver: "127.0.0.1:9"}}
controls: [tcp://127.0.0.1:{port}]
platforms:
  app:
    name: App
    features:
      messaging: [tcp://127.0.0.1:{port}]
      web: [tls://127.0.0.1:{port}]
""")
    return path


PLATFORM_LINE = "App: messaging ok · web blocked (tls.timeout)"


def file_size_limit(limit: int) -> Callable[[], None]:
    """For preexec_fn: files the child writes cannot grow past `limit` bytes (EFBIG), a full
    disk as an unprivileged test can make one."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not death by signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


# --- every output path checked before the first packet -------------------------------------


@pytest.mark.parametrize(("output", "extra", "says"), [
    ("missing/out.json", [], "there is no folder"),
    ("folder", ["-f", "json", "--force"], "that is a folder"),
    ("exists.json", [], "pass --force"),
    ("out.csv", ["-f", "json"], "the extension says csv, -f says json"),
    ("out.txt", [], "cannot tell the format"),
])
def test_an_output_that_cannot_be_written_is_refused_before_any_packet(
        tmp_path: Path, listener: socket.socket, output: str, extra: list[str],
        says: str) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "exists.json").write_text("{}")
    done = probe("run", "-c", str(catalog(tmp_path, listener)), "-o", output, *extra,
                 cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert line.startswith("probe: ") and says in line
    assert done.stdout == ""
    assert nothing_connected(listener)
    assert (tmp_path / "exists.json").read_text() == "{}"


@pytest.mark.parametrize(("output", "fmt", "starts"), [
    ("out.csv", "csv", "platform,feature,url,"),
    ("out.csv", None, "platform,feature,url,"),
    ("out.md", "markdown", "# probe report"),
    ("out.md", None, "# probe report"),
    ("out.json", None, "{"),
])
def test_the_output_format_follows_f_else_the_extension(
        tmp_path: Path, listener: socket.socket, output: str, fmt: str | None,
        starts: str) -> None:
    done = probe("run", "-c", str(catalog(tmp_path, listener)), "-o", output,
                 *(["-f", fmt] if fmt else []), cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # web is blocked
    assert (tmp_path / output).read_text().startswith(starts)
    if fmt is None:
        assert done.stdout.rstrip().endswith(PLATFORM_LINE)  # the report, for people
    else:
        assert done.stdout.startswith(starts)


def test_a_json_file_that_cannot_be_written_loses_no_result(
        tmp_path: Path, listener: socket.socket) -> None:
    done = probe("run", "-c", str(catalog(tmp_path, listener)), "-o", "out.json",
                 cwd=tmp_path, preexec=file_size_limit(1024))
    assert done.returncode == 74, done.stderr
    line = one_line(done.stderr)
    assert line.startswith("probe: could not write out.json: ") and "report above" in line
    assert done.stdout.splitlines()[-1].endswith(PLATFORM_LINE)  # the run, on stdout
    assert not (tmp_path / "out.json").exists()


def test_a_jsonl_file_that_cannot_be_written_stays_whole_lines(
        tmp_path: Path, listener: socket.socket) -> None:
    done = probe("run", "-c", str(catalog(tmp_path, listener)), "-o", "out.jsonl", "-f",
                 "jsonl", cwd=tmp_path, preexec=file_size_limit(1024))
    assert done.returncode == 74, done.stderr
    assert one_line(done.stderr).startswith("probe: could not write out.jsonl: ")
    records = [json.loads(line) for line in done.stdout.splitlines()]  # all on stdout
    assert records[-1]["record"] == "end" and records[-1]["targets"] == 2
    kept = records_of(tmp_path / "out.jsonl")  # whole lines only: every one parses
    assert kept[0]["record"] == "run" and kept[-1].get("record") != "end"
    assert (tmp_path / "out.jsonl").stat().st_size <= 1024
    assert read_run(tmp_path / "out.jsonl").interrupted  # no end record: it was cut


# --- JSONL records ---------------------------------------------------------------------------


def records_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_has_run_network_feature_platform_and_end_records(
        tmp_path: Path, listener: socket.socket) -> None:
    path = catalog(tmp_path, listener)
    done = probe("run", "-c", str(path), "-o", "out.jsonl", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    records = records_of(tmp_path / "out.jsonl")
    kinds = [r.get("record", "target") for r in records]
    assert kinds == ["run", "target", "target", "network", "feature", "feature", "platform",
                     "end"]
    assert records[0]["schema"] == "probe.run/1" and records[0]["started_at"]
    assert {r["feature"] for r in records if "record" not in r} == {"messaging", "web"}
    assert records[-1]["interrupted"] is False and records[-1]["targets"] == 2
    # report and compare read it as fully as JSON
    summary = probe("report", "out.jsonl", "-f", "summary", cwd=tmp_path)
    assert summary.returncode == 0 and summary.stdout.splitlines()[-1].endswith(PLATFORM_LINE)
    assert probe("run", "-c", str(path), "-o", "out.json", cwd=tmp_path).returncode == 1
    compared = probe("compare", "out.json", "out.jsonl", cwd=tmp_path)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    last = compared.stdout.splitlines()[-1]
    assert last.startswith("Comparing 20") and "→ 20" in last and "?" not in last
    assert "nothing changed" in last


def test_a_jsonl_file_cut_by_sigterm_says_it_was_interrupted(
        tmp_path: Path, listener: socket.socket) -> None:
    path = catalog(tmp_path, listener, timeout="60s")  # the tls target waits a minute
    out = tmp_path / "out.jsonl"
    child = subprocess.Popen([sys.executable, "-m", "probe", "run", "-c", str(path), "-o",
                              str(out)], cwd=tmp_path, env=env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while '"feature":"messaging"' not in (out.read_text() if out.exists() else ""):
            assert child.poll() is None and time.monotonic() < deadline, "no target line"
            time.sleep(0.05)
        child.send_signal(signal.SIGTERM)
        stdout, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 143, stderr
    assert "Traceback" not in stderr
    records = records_of(out)  # every line parses
    assert records[0]["record"] == "run"
    assert records[-1] == {**records[-1], "record": "end", "interrupted": True, "targets": 2}
    web = next(r for r in records if r.get("feature") == "web" and "record" not in r)
    assert (web["status"], web["reason"]) == ("inconclusive", "target.interrupted")
    assert web["detail"] == "not measured (interrupted)"
    assert read_run(out).interrupted
    assert "Interrupted: 1 of 2 targets not measured" in stdout
    # a platform with a feature not measured is not known to work
    assert stdout.splitlines()[-1].startswith("? App: messaging ok · web inconclusive")


# --- probe mock's start-up errors ----------------------------------------------------------


def test_mock_on_a_port_in_use_is_one_line(tmp_path: Path, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    scenario = tmp_path / "mock.yaml"
    scenario.write_text(f"version: 1\nendpoints:\n  - {{kind: tcp, name: a.test, port: {port}, "
                        f"platform: app, feature: messaging}}\n")
    done = probe("mock", "-s", str(scenario), cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert one_line(done.stderr) == (f"probe: endpoints[0] (tcp a.test): cannot listen on "
                                     f"127.0.0.1 port {port}: Address already in use")


def test_mock_with_a_behaviour_its_kind_lacks_lists_those_it_has(tmp_path: Path) -> None:
    from probe.mock.tls import TLSServer

    scenario = tmp_path / "mock.yaml"
    scenario.write_text("version: 1\nendpoints:\n  - {kind: tls, name: chat.test, platform: app,"
                        " feature: messaging, behaviour: silent}\n")
    done = probe("mock", "-s", str(scenario), cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert one_line(done.stderr) == (
        f"probe: endpoints[0] (tls chat.test): no behaviour 'silent' for kind tls; it has: "
        f"{', '.join(TLSServer.BEHAVIOURS)}")
    assert done.stdout == ""


# --- the demo --------------------------------------------------------------------------------


def test_demo_ends_with_the_answer_and_points_at_nothing_it_deletes(tmp_path: Path) -> None:
    done = probe("demo", cwd=tmp_path, timeout=180)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    platforms = ("Chatter:", "Telegrab:", "Signum:", "Voxa:")
    assert [line.split(" ", 1)[1].split(" ")[0] for line in lines[-4:]] == list(platforms)
    assert lines[-5].startswith("Network: ok")
    assert "probe-mock-" not in done.stdout + done.stderr  # no path to a temporary folder
    assert "pass --keep DIR to keep" in done.stderr


def test_demo_interrupted_exits_130(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-m", "probe", "demo"], cwd=tmp_path, env=env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stderr is not None
        seen = ""
        while "1/2" not in seen:
            line = child.stderr.readline()
            assert line, seen
            seen += line
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130, seen + stderr
    assert "Traceback" not in stderr and "interrupted" in stderr


# --- the README: the mock behaviours table and the CI example ------------------------------


def readme_section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def fenced(section: str, language: str) -> str:
    match = re.search(rf"```{language}\n(.*?)```", section, re.DOTALL)
    assert match, f"no {language} block"
    return match.group(1)


def test_readme_lists_every_mock_behaviour() -> None:
    """The README's table of mock kinds and behaviours is the code's (each server class's
    BEHAVIOURS), so it cannot drift."""
    import importlib

    from probe.mock.world import SERVERS

    listed: dict[str, list[str]] = {}
    for line in readme_section("Using probe in your CI").splitlines():
        cells = line.split("|")
        if len(cells) < 4 or not cells[1].strip().startswith("`"):
            continue
        for kind in re.findall(r"`([^`]+)`", cells[1]):
            listed[kind] = re.findall(r"`([^`]+)`", cells[2])
    code = {kind: list(getattr(importlib.import_module(module), name).BEHAVIOURS)
            for kind, (module, name) in SERVERS.items()}
    assert listed == code


def test_readme_ci_example_shows_udp_loss(tmp_path: Path) -> None:
    """The CI example's scenario and shell lines, run as the README has them (loopback only):
    the run shows udp.loss and the script's own check passes."""
    section = readme_section("Using probe in your CI")
    (tmp_path / "mock.yaml").write_text(fenced(section, "yaml"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "probe"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m probe \"$@\"\n")
    shim.chmod(0o755)
    child = subprocess.Popen(["bash", "-e", "-c", fenced(section, "sh")], cwd=tmp_path,
                             env={**env(), "PATH": f"{bin_dir}:{os.environ['PATH']}"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        stdout, stderr = child.communicate(timeout=180)
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)  # the mock, if the script did not end it
        except ProcessLookupError:
            pass
    assert child.returncode == 0, stdout + stderr
    assert "calls degraded (udp.loss)" in stdout.splitlines()[-1]
    run = read_run(tmp_path / "run.json")
    assert {t.reason for t in run.targets} >= {"udp.loss", "tls.reset"}
