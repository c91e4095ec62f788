"""Servers that keep the socket full (issue 22): each flood ends in a reason code within
`timeout x 6 x attempts + 5 s`, beside a good target whose result it does not cost, with a
complete result file; SIGTERM during a flood exits 143 with the finished targets written.

The probe runs as a subprocess (`probe run -o out.json`) and the servers on a thread of this
process (`Background`): a probe that never yields would hang a test run in-process, servers
included. The bound is the subprocess's timeout: a run that passes it has hung.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from probe.layers.http import MAX_CONTROL_FRAMES, MAX_INTERIM
from probe.mock.certs import TestCA
from probe.mock.hostile import (
    H1_FLOODS,
    H2_FLOODS,
    Background,
    HostileServer,
    TicketFloodServer,
    UdpFloodServer,
)

NAME = "mock.test"
TIMEOUT, ATTEMPTS = 1, 2
BOUND = TIMEOUT * 6 * ATTEMPTS + 5  # seconds: the bound on a run against a flood
UNCLEAN = ("Traceback", "Task was destroyed", "unclosed", "Exception ignored", "never retrieved")


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture(scope="module")
def ca_path(ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(ca.write_ca(tmp_path_factory.mktemp("floods") / "ca.pem"))


@pytest.fixture(scope="module")
def quick(ca: TestCA) -> Iterator[HostileServer]:
    """A good https server: the target beside each flood (echo_address answers 200 at once)."""
    with Background(HostileServer("echo_address", ca=ca, name=NAME)) as (server,):
        yield server


def https(port: int, name: str) -> dict[str, Any]:
    return {"url": f"https://{NAME}:{port}/", "address": "127.0.0.1", "name": name}


def write_catalog(folder: Path, targets: list[dict[str, Any]], **settings: Any) -> Path:
    document = {"version": 1,
                "settings": {"timeout": f"{TIMEOUT}s", "attempts": ATTEMPTS, **settings},
                "platforms": {"p": {"features": {"f": targets}}}}
    catalog = folder / "floods.yaml"
    catalog.write_text(json.dumps(document))
    return catalog


def probe_command(catalog: Path, output: Path) -> list[str]:
    return [sys.executable, "-X", "dev", "-m", "probe", "run", "-c", str(catalog), "-f", "json",
            "-o", str(output)]


# (server, its target, the reason, words of its detail). The first of each protocol is its
# generic guard: valid frames, records or datagrams, as fast as the socket allows.
Case = tuple[Callable[[TestCA], Any], Callable[[Any], dict[str, Any]], str, str]


def hostile(behaviour: str) -> Callable[[TestCA], Any]:
    return lambda ca: HostileServer(behaviour, ca=ca, name=NAME)


CASES: dict[str, Case] = {
    **{b: (hostile(b), lambda s: https(s.port, "flood"), "http.reset", "the server flooded")
       for b in (*H1_FLOODS, *H2_FLOODS)},
    "ticket_flood": (lambda ca: TicketFloodServer(ca=ca, name=NAME),
                     lambda s: https(s.port, "flood"), "http.reset",
                     "bytes of TLS records without application data"),
    # 127.0.0.9 is loopback, a reserved address for a public name: dns.bogon, not a flood's
    "dns": (lambda ca: UdpFloodServer("dns"), lambda s: {"url": "dns://site.example.org",
                                                         "name": "flood"}, "dns.bogon", ""),
    "stun": (lambda ca: UdpFloodServer("stun"),
             lambda s: {"url": f"stun://127.0.0.1:{s.port}", "name": "flood"}, "ok", ""),
    "quic": (lambda ca: UdpFloodServer("quic", ca=ca, name=NAME),
             lambda s: {"url": f"quic://{NAME}:{s.port}", "address": "127.0.0.1",
                        "name": "flood"}, "quic.timeout", "did not complete"),
}
WORDS = {"interim_flood": f"more than {MAX_INTERIM} interim (1xx) responses",
         "chunk_extensions": "besides",
         "settings_flood": "besides",
         "window_update_flood": f"more than {MAX_CONTROL_FRAMES} HTTP/2 frames",
         "ping_flood": "(the last: PING)",
         "empty_data_flood": "(the last: empty DATA)",
         "unknown_frame_flood": "(the last: unknown type)"}


@pytest.mark.parametrize("case", list(CASES))
def test_a_flood_ends_in_time_with_a_reason(case: str, ca: TestCA, ca_path: str,
                                            quick: HostileServer, tmp_path: Path) -> None:
    make_server, make_target, reason, words = CASES[case]
    with Background(make_server(ca)) as (server,):
        settings: dict[str, Any] = {"ca_file": ca_path, "concurrency": 2}
        if case == "dns":
            settings["resolver"] = f"127.0.0.1:{server.port}"
        catalog = write_catalog(tmp_path, [make_target(server), https(quick.port, "good")],
                                **settings)
        output = tmp_path / "out.json"
        start = time.monotonic()
        try:
            done = subprocess.run(probe_command(catalog, output), capture_output=True,
                                  text=True, timeout=BOUND, check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run against {case} did not end within {BOUND} s")
        seconds = time.monotonic() - start
        flooded = getattr(server, "bytes_sent", None) or getattr(server, "sent", None)
    for word in UNCLEAN:
        assert word not in done.stderr, done.stderr[-3000:]
    assert done.returncode in (0, 1), done.stderr[-3000:]
    saved = json.loads(output.read_text())
    assert saved["schema"] == "probe.run/1" and saved["interrupted"] is False
    assert saved == json.loads(done.stdout)  # the file is the whole report
    results = {t["name"]: t for t in saved["targets"]}
    flood = results["flood"]
    print(f"\n{case}: {flood['reason']} in {seconds:.2f} s (flood: {flooded}): "
          f"{flood['detail'][:150]}")
    assert results["good"]["reason"] == "ok", results["good"]["detail"]
    assert flood["reason"] == reason, flood["detail"]
    assert words in flood["detail"] and WORDS.get(case, "") in flood["detail"]
    if reason == "http.reset":
        assert flood["phases"]["http"]["failure"] == "protocol_error"


@pytest.mark.parametrize("behaviour", ["interim_flood", "ping_flood"])
def test_sigterm_during_a_flood_exits_143_with_the_finished_targets(
    behaviour: str, ca: TestCA, ca_path: str, quick: HostileServer, tmp_path: Path
) -> None:
    # One worker: the good target first, then floods one after another for seconds, so the
    # signal lands while one is in flight (a probe that never yields would never see it).
    with Background(HostileServer(behaviour, ca=ca, name=NAME)) as (server,):
        targets = [https(quick.port, "good")]
        targets += [https(server.port, f"flood{i}") for i in range(300)]
        catalog = write_catalog(tmp_path, targets, ca_file=ca_path, concurrency=1)
        output = tmp_path / "out.json"
        env = {**os.environ, "PYTHONWARNINGS": "error::ResourceWarning"}
        proc = subprocess.Popen(probe_command(catalog, output), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        try:
            # A flood began: the one worker has handed the good target over (on_done).
            end = time.monotonic() + 30
            while server.floods < 2 and proc.poll() is None and time.monotonic() < end:
                time.sleep(0.02)
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert server.floods >= 2, "no flood began"
            proc.send_signal(signal.SIGTERM)
            stdout, stderr = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("SIGTERM during a flood was ignored: the probe never yielded")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for word in UNCLEAN:
        assert word not in stderr, stderr[-3000:]
    assert proc.returncode == 143, stderr[-3000:]
    saved = json.loads(output.read_text())
    assert saved["interrupted"] is True and saved == json.loads(stdout)
    results = {t["name"]: t for t in saved["targets"]}
    assert len(results) == 301  # every target named, measured or not
    assert results["good"]["reason"] == "ok"
    unfinished = [t for t in saved["targets"] if t["reason"] == "target.interrupted"]
    assert unfinished, "every flood finished before the signal: nothing was in flight"
