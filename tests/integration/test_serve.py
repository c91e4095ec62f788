"""`probe serve`: metrics of real loopback runs, scraped over loopback and parsed with
prometheus_client's own parser; the tiny HTTP server against odd clients; the CLI end to end."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from probe import catalog, history, serve
from probe.results import Run


@pytest.fixture
def listener() -> Iterator[int]:
    """A real listening port on loopback (the kernel completes handshakes; no accept needed)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A bound port with no listener: every SYN gets RST."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


def catalog_text(open_port: int, closed: int) -> str:
    return f"""
version: 1
settings: {{timeout: 1s, attempts: 2}}
controls: [tcp://127.0.0.1:{open_port}]
platforms:
  demo:
    features:
      chat:
        - url: tcp://127.0.0.1:{open_port}
          name: chat server
      calls: [tcp://127.0.0.1:{closed}]
"""


def samples(text: str) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def one(found: dict[str, list[Sample]], metric: str, /, **labels: str) -> Sample:
    matches = [s for s in found.get(metric, []) if all(s.labels.get(k) == v
                                                        for k, v in labels.items())]
    assert len(matches) == 1, (metric, labels, found.get(metric))
    return matches[0]


async def scrape_until(port: int, predicate: str, deadline: float = 20.0) -> str:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        end = time.monotonic() + deadline
        while True:
            response = await client.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            if predicate in response.text or time.monotonic() > end:
                return response.text
            await asyncio.sleep(0.05)


def test_metrics_of_real_runs(listener: int, closed_port: int, tmp_path: Path) -> None:
    loaded = catalog.loads(catalog_text(listener, closed_port))
    db = tmp_path / "h.sqlite"

    async def go() -> tuple[str, str, int]:
        bound: list[tuple[str, int]] = []
        task = asyncio.create_task(serve.serve(
            loaded, host="127.0.0.1", port=0, every=0.2, db=str(db), on_listening=bound.append))
        while not bound:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.01)
        port = bound[0][1]
        before = await scrape_until(port, "probe_runs_total", 5)
        text = await scrape_until(port, "probe_runs_total 3.0")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return before, text, port

    _, text, port = asyncio.run(go())
    found = samples(text)
    assert one(found, "probe_runs_total").value >= 3
    chat = one(found, "probe_status", platform="demo", feature="chat",
               target=f"tcp://127.0.0.1:{listener}", name="chat server")
    assert chat.value == 0 and chat.labels["reason"] == "ok"
    calls = one(found, "probe_status", platform="demo", feature="calls")
    assert calls.value == 2 and calls.labels["reason"] == "tcp.reset"
    assert one(found, "probe_success", feature="chat").value == 1
    assert one(found, "probe_success", feature="calls").value == 0
    rtt = one(found, "probe_rtt_seconds", feature="chat").value
    assert 0 <= rtt < 1
    assert not [s for s in found.get("probe_rtt_seconds", []) if s.labels["feature"] == "calls"]
    assert one(found, "probe_status", platform=history.CONTROL).value == 0
    assert one(found, "probe_feature_status", feature="calls").value == 2
    assert one(found, "probe_platform_status", platform="demo").labels["reason"] == "partial"
    assert one(found, "probe_network_status").value == 0
    assert 0 < one(found, "probe_run_duration_seconds").value < 10
    assert abs(one(found, "probe_last_run_timestamp_seconds").value - time.time()) < 30
    assert one(found, "probe_run_interrupted").value == 0
    # the server is gone once serve() ends
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    # and every run it made is in the history
    connection = history.connect(db)
    assert len(history.run_ids(connection)) >= 3
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def exporter_with(run: Run) -> serve.Exporter:
    exporter = serve.Exporter()
    exporter.update(run)
    return exporter


def test_exporter_uses_its_own_registry() -> None:
    from prometheus_client import REGISTRY

    exporter = serve.Exporter()
    assert exporter.registry is not REGISTRY
    assert "probe_runs_total 0.0" in exporter.exposition().decode()
    assert "probe_status" not in exporter.exposition().decode()  # no run yet: no verdicts


def test_exporter_from_a_saved_run() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_history import blocked_run, ok_run

    found = samples(exporter_with(ok_run()).exposition().decode())
    web = one(found, "probe_throughput_bits_per_second", feature="web", name="site")
    assert web.value == 8e6 + 1
    assert one(found, "probe_loss_ratio", feature="calls").value == pytest.approx(0.1)
    found = samples(exporter_with(blocked_run()).exposition().decode())
    assert one(found, "probe_status", feature="web").labels["reason"] == "tls.timeout"
    assert one(found, "probe_loss_ratio", feature="calls").value == 1.0
    assert "probe_throughput_bits_per_second" not in {
        n for n, s in found.items() if s}


def raw(port: int, request: bytes) -> bytes:
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(request)
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionError:  # a server dropping a hostile request may reset it
            pass
    return b"".join(chunks)


def test_http_server_answers_odd_clients() -> None:
    async def go() -> dict[str, bytes]:
        exporter = serve.Exporter()
        server = await serve.start_server(exporter, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        silent = socket.create_connection(("127.0.0.1", port))  # says nothing at all

        def ask(request: bytes) -> bytes:
            return raw(port, request)

        out = {}
        for label, request in {
            "head": b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            "root": b"GET / HTTP/1.1\r\n\r\n",
            "missing": b"GET /nope HTTP/1.1\r\n\r\n",
            "post": b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "garbage": b"\x16\x03\x01\x00\xff garbage\r\n\r\n",
            "huge": b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 100_000 + b"\r\n\r\n",
            "query": b"GET /metrics?x=1 HTTP/1.0\r\n\r\n",
        }.items():
            out[label] = await asyncio.to_thread(ask, request)
        silent.close()
        server.close()
        await server.wait_closed()
        return out

    out = asyncio.run(go())
    assert out["head"].startswith(b"HTTP/1.1 200") and out["head"].endswith(b"\r\n\r\n")
    assert b"Content-Length: " in out["head"]
    assert out["root"].startswith(b"HTTP/1.1 200") and b"/metrics" in out["root"]
    assert out["missing"].startswith(b"HTTP/1.1 404")
    assert out["post"].startswith(b"HTTP/1.1 405")
    assert out["garbage"].startswith(b"HTTP/1.1 400")
    assert out["huge"] == b""  # dropped, never a crash
    assert out["query"].startswith(b"HTTP/1.1 200") and b"probe_runs_total" in out["query"]


@pytest.mark.parametrize(("text", "expected", "warns"), [
    ("127.0.0.1:9464", ("127.0.0.1", 9464), False),
    (":9464", ("127.0.0.1", 9464), False),
    ("[::1]:0", ("::1", 0), False),
    ("localhost:9", ("localhost", 9), False),
    ("0.0.0.0:9464", ("0.0.0.0", 9464), True),
    ("192.0.2.1:80", ("192.0.2.1", 80), True),
])
def test_listen_addresses(text: str, expected: tuple[str, int], warns: bool) -> None:
    host, port = serve.parse_listen(text)
    assert (host, port) == expected
    assert (serve.bind_warning(host) is not None) is warns


@pytest.mark.parametrize("text", ["9464", "127.0.0.1:", "127.0.0.1:99999", "host:port"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        serve.parse_listen(text)


def test_serve_command_end_to_end(listener: int, closed_port: int, tmp_path: Path) -> None:
    path = tmp_path / "probes.yaml"
    path.write_text(catalog_text(listener, closed_port))
    db = tmp_path / "h.sqlite"
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    process = subprocess.Popen(
        [sys.executable, "-m", "probe", "serve", "-c", str(path), "--listen", "127.0.0.1:0",
         "--every", "0.5s", "--db", str(db)],
        stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
        assert match, line
        text = asyncio.run(scrape_until(int(match[1]), "probe_runs_total 2.0"))
        found = samples(text)
        assert one(found, "probe_status", feature="calls").labels["reason"] == "tcp.reset"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 143
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    connection = history.connect(db)
    assert len(history.run_ids(connection)) >= 2
    assert not (tmp_path / "xdg").exists(), "nothing written to the user data directory"


def test_serve_refuses_a_port_in_use(listener: int, tmp_path: Path) -> None:
    path = tmp_path / "probes.yaml"
    path.write_text(catalog_text(listener, listener))
    result = subprocess.run(
        [sys.executable, "-m", "probe", "serve", "-c", str(path), "--listen",
         f"127.0.0.1:{listener}"], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--listen" in result.stderr and "Traceback" not in result.stderr


def test_a_call_flow_exports_its_mos_and_reason() -> None:
    from builders import judge_subject, obs, ph, sample

    from probe.classify import Subject
    from probe.results import CatalogRef, NetworkResult

    gurgle = ph(ms=40.0, sent=250, answered=180, lost=70, loss=0.28, call=True, rate=50.0,
                size=160, rtt_median_ms=40.0, jitter_ms=27.0, loss_bursts=60,
                answered_per_s=[36] * 5)
    target = judge_subject(Subject("app", "calls", "stun://192.0.2.7:3478"),
                           obs(sample(stun=gurgle)))
    run = Run(probe_version="t", started_at="2026-12-04T08:00:00Z",
              finished_at="2026-12-04T08:00:05Z", catalog=CatalogRef(path="x", sha256=""),
              network=NetworkResult(status="ok"), targets=[target])
    found = samples(exporter_with(run).exposition().decode())
    assert one(found, "probe_status", feature="calls").labels["reason"] == "call.poor"
    assert 1.0 <= one(found, "probe_call_mos", feature="calls").value < 3.1
