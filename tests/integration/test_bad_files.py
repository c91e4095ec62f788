"""Files that are not what a command reads (issue 22): `report`, `compare`, `run -b` and
`history` given binary bytes, another program's JSON, 100,000-deep nesting, a result file
holding NaN or an infinity, an empty file: each one line on stderr, exit 2, no traceback, and
`run -b` refuses its baseline before it measures anything."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from probe.cli import app

DEEP = 100_000


@pytest.fixture(scope="module")
def listener() -> Iterator[socket.socket]:
    """A loopback port the catalog's target points at; nobody accepts, so a connection the
    probe made waits in its queue, where the test sees it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    yield sock
    sock.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, listener: socket.socket) -> Path:
    """A catalog of one tcp target at the listener, and a good saved run of it."""
    folder = tmp_path_factory.mktemp("bad-files")
    port = listener.getsockname()[1]
    (folder / "catalog.yaml").write_text(json.dumps({
        "version": 1, "settings": {"timeout": "1s", "attempts": 1},
        "platforms": {"p": {"features": {"f": [f"tcp://127.0.0.1:{port}"]}}}}))
    done = cli("run", "-c", str(folder / "catalog.yaml"), "-f", "json", "-o",
               str(folder / "good.json"))
    assert done.exit_code == 0, done.stderr
    assert connections(listener) == 1
    return folder


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def connections(listener: socket.socket) -> int:
    """How many connections wait at the listener (each taken and closed)."""
    count = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def bad_file(folder: Path, kind: str) -> Path:
    """A file of the given kind, made from the good run where it holds one."""
    good = (folder / "good.json").read_text()
    content: dict[str, bytes] = {
        "binary": bytes(range(256)) * 16,
        "list": b"[1, 2]",
        "null": b"null",
        "deep_array": b"[" * DEEP + b"]" * DEEP,
        "deep_object": b'{"a": ' * DEEP + b"1" + b"}" * DEEP,
        "empty": b"",
        "nan": good.replace('"ms": ', '"ms": NaN, "was": ', 1).encode(),
        "infinity": good.replace('"ms": ', '"ms": 1e999, "was": ', 1).encode(),
        "jsonl_binary": bytes(range(256)) * 16,
        "jsonl_list": b"[1, 2]\n",
        "jsonl_deep": b"[" * DEEP + b"]" * DEEP + b"\n",
        "jsonl_nan": b'{"record": "run", "schema": "probe.run/1", "started_at": NaN}\n',
        "jsonl_empty": b"",
        "jsonl_blank": b"\n \n",
    }
    suffix = ".jsonl" if kind.startswith("jsonl_") else ".json"
    path = folder / f"{kind}{suffix}"
    path.write_bytes(content[kind])
    return path


KINDS = ("binary", "list", "null", "deep_array", "deep_object", "empty", "nan", "infinity",
         "jsonl_binary", "jsonl_list", "jsonl_deep", "jsonl_nan", "jsonl_empty", "jsonl_blank")


def one_line_exit_2(result: Result, path: Path) -> None:
    code, stdout, stderr = result.exit_code, result.stdout, result.stderr
    assert code == 2, (code, stderr, stdout[:300])
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert str(path) in stderr and stdout == "", stderr


@pytest.mark.parametrize("kind", KINDS)
def test_report_and_compare_refuse_it_in_one_line(folder: Path, kind: str) -> None:
    path = bad_file(folder, kind)
    good = str(folder / "good.json")
    for args in (("report", str(path)), ("report", good, "-b", str(path)),
                 ("compare", str(path), good), ("compare", good, str(path))):
        one_line_exit_2(cli(*args), path)


@pytest.mark.parametrize("kind", KINDS)
def test_run_refuses_the_baseline_before_measuring(folder: Path, listener: socket.socket,
                                                   kind: str) -> None:
    path = bad_file(folder, kind)
    connections(listener)  # none left by another test
    output = folder / f"out-{kind}.json"
    result = cli("run", "-c", str(folder / "catalog.yaml"), "-b", str(path), "-o", str(output))
    one_line_exit_2(result, path)
    assert connections(listener) == 0, "measured before refusing the baseline"
    assert not output.exists()


@pytest.mark.parametrize("kind", ["binary", "list", "deep_array", "empty", "jsonl_blank"])
def test_history_refuses_it_in_one_line(folder: Path, kind: str) -> None:
    path = bad_file(folder, kind)
    before = path.read_bytes()
    one_line_exit_2(cli("history", "--db", str(path)), path)
    assert path.read_bytes() == before  # a read command never writes
