"""Hostile peers on loopback: each attack ends in a reason code within its timeout, with memory
bounded and no traceback, in-process (Runner) and through the command line."""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from probe.catalog import LoadedCatalog
from probe.layers.http import BYTE_CAP
from probe.mock.certs import TestCA
from probe.mock.hostile import (
    Background,
    HostileDnsServer,
    HostileServer,
    HostileTurnServer,
)
from probe.mock.quic import QuicServer
from probe.mock.stun import StunServer
from probe.results import TargetResult
from probe.runner import Runner

MakeCatalog = Callable[..., LoadedCatalog]
NAME = "mock.test"
# Python allocations at their peak during one hostile run: below the 16 MiB byte cap, so a
# layer that kept the endless body (or a header bomb) in memory fails here.
MEMORY_BOUND = 12 << 20
RSS_BOUND_KIB = 256 << 10  # growth of the process's peak RSS (OpenSSL's buffers included)


@dataclass
class Outcome:
    result: TargetResult
    seconds: float
    peak: int  # tracemalloc peak, bytes
    rss_growth_kib: int
    loop_errors: list[dict[str, Any]]

    def phase(self, layer: str) -> dict[str, Any]:
        return dict(self.result.phases[layer])


async def hostile_run(server: Any, target: dict[str, Any], make_catalog: MakeCatalog,
                      **settings: Any) -> Outcome:
    """Start `server`, run one target against it (URL and settings with {port}), measure time
    and memory."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    await server.start()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    start = time.perf_counter()
    try:
        settings = {k: v.format(port=server.port) if isinstance(v, str) else v
                    for k, v in {"timeout": "1s", "attempts": 1, **settings}.items()}
        loaded = make_catalog({**target, "url": target["url"].format(port=server.port)},
                              **settings)
        runner = Runner(loaded=loaded)
        await runner.run()
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await server.stop()
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    [result] = runner.finish().targets
    print(f"\n{type(server).__name__}({server.behaviour}): {result.reason} in {seconds:.2f} s, "
          f"python peak {peak / 2**20:.1f} MiB, rss growth {growth / 1024:.1f} MiB: "
          f"{result.detail[:120]}")
    return Outcome(result, seconds, peak, growth, errors)


def bounded(outcome: Outcome, *, within: float) -> None:
    assert outcome.seconds < within, f"took {outcome.seconds:.2f} s"
    assert outcome.peak < MEMORY_BOUND, f"python peak {outcome.peak / 2**20:.1f} MiB"
    assert outcome.rss_growth_kib < RSS_BOUND_KIB, f"rss grew {outcome.rss_growth_kib} KiB"
    assert not outcome.loop_errors, outcome.loop_errors


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture(scope="module")
def ca_path(ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(ca.write_ca(tmp_path_factory.mktemp("hostile") / "ca.pem"))


def https(path: str = "/") -> dict[str, Any]:
    return {"url": f"https://{NAME}:{{port}}{path}", "address": "127.0.0.1"}


def tls() -> dict[str, Any]:
    return {"url": f"tls://{NAME}:{{port}}", "address": "127.0.0.1"}


# --- https / tls ---------------------------------------------------------------------------


def test_endless_body_stops_at_the_byte_cap(run: Any, make_catalog: MakeCatalog, ca: TestCA,
                                            ca_path: str) -> None:
    server = HostileServer("endless_body", ca=ca, name=NAME)
    outcome = run(hostile_run(server, https(), make_catalog, ca_file=ca_path, timeout="2s"))
    http = outcome.phase("http")
    # Loopback delivers 16 MiB well within the 6 s window: the cap, not the window, stops it.
    assert http.get("capped") is True, http
    assert BYTE_CAP <= http["bytes"] < BYTE_CAP + 65536
    assert outcome.result.reason == "ok"  # a body that does not end is no block: it was fast
    assert server.bytes_sent >= BYTE_CAP
    bounded(outcome, within=6.0)


def test_slowloris_handshake_fails_at_the_deadline(run: Any, make_catalog: MakeCatalog,
                                                   ca: TestCA, ca_path: str) -> None:
    # A byte every 0.25 s: an idle timer of 1 s would never fire; the deadline must.
    server = HostileServer("slowloris", ca=ca, name=NAME, interval=0.25)
    outcome = run(hostile_run(server, tls(), make_catalog, ca_file=ca_path, timeout="1s"))
    assert outcome.result.reason == "tls.timeout"
    phase = outcome.phase("tls")
    assert phase["failure"] == "timeout" and phase["server_bytes"] >= 1
    assert 900 <= phase["ms"] < 1500
    bounded(outcome, within=4.0)  # the control handshake (same server) takes its timeout too


def test_slow_response_headers_end_at_the_transfer_window(
    run: Any, make_catalog: MakeCatalog, ca: TestCA, ca_path: str
) -> None:
    server = HostileServer("slow_headers", ca=ca, name=NAME, interval=0.25)
    outcome = run(hostile_run(server, https(), make_catalog, ca_file=ca_path, timeout="1s"))
    assert outcome.result.reason == "http.timeout"
    assert outcome.phase("http")["ms"] < 3600  # the 3 x timeout window, a deadline
    bounded(outcome, within=6.0)


def test_one_megabyte_certificate_chain_is_refused_quickly(
    run: Any, make_catalog: MakeCatalog, ca: TestCA, ca_path: str
) -> None:
    server = HostileServer("huge_chain", ca=ca, name=NAME, chain=120, padding=8192)
    outcome = run(hostile_run(server, tls(), make_catalog, ca_file=ca_path))
    assert outcome.result.status == "blocked"
    assert outcome.result.reason.startswith("tls.")
    assert outcome.phase("tls")["failure"] == "protocol_error"  # OpenSSL: excessive message size
    bounded(outcome, within=3.0)


def test_150_small_junk_certificates_are_read_and_ignored(
    run: Any, make_catalog: MakeCatalog, ca: TestCA, ca_path: str
) -> None:
    # Under OpenSSL's 100 KB limit: the chain is parsed, the junk ignored, the leaf verified.
    server = HostileServer("huge_chain", ca=ca, name=NAME, chain=150, padding=0)
    outcome = run(hostile_run(server, tls(), make_catalog, ca_file=ca_path))
    assert outcome.result.reason == "ok", outcome.result.detail
    bounded(outcome, within=3.0)


@pytest.mark.parametrize("behaviour", ["header_bomb", "header_line"])
def test_header_bombs_are_a_failed_response(run: Any, make_catalog: MakeCatalog, ca: TestCA,
                                            ca_path: str, behaviour: str) -> None:
    server = HostileServer(behaviour, ca=ca, name=NAME)
    outcome = run(hostile_run(server, https(), make_catalog, ca_file=ca_path))
    assert outcome.result.status == "blocked"
    assert outcome.result.reason.startswith("http."), outcome.result.reason
    assert outcome.phase("http")["failure"] == "protocol_error"
    bounded(outcome, within=3.0)


@pytest.mark.parametrize("target", [tls, https], ids=["tls", "https"])
def test_a_warning_alert_to_every_name_is_no_sni_filter(
    run: Any, make_catalog: MakeCatalog, ca: TestCA, ca_path: str,
    target: Callable[[], dict[str, Any]],
) -> None:
    # The server answers the harmless control name as it answers the target's: a warning
    # alert, then FIN (OpenSSL: EOF). A server that treats every name alike filters none.
    server = HostileServer("warning_alert", ca=ca, name=NAME)
    outcome = run(hostile_run(server, target(), make_catalog, ca_file=ca_path, attempts=2))
    assert outcome.result.reason != "tls.sni_filtered", outcome.result.detail
    assert outcome.result.reason == "tls.eof"
    phase = outcome.phase("tls")
    assert phase["failure"] == "eof" and phase["first_record"] == "alert"
    control = dict(outcome.result.observation.diagnosis["sni_control"].dump())
    assert control["reply"] == "alert"
    assert "refuses both names" in outcome.result.detail
    bounded(outcome, within=3.0)


# --- dns, stun, quic -----------------------------------------------------------------------


@pytest.mark.parametrize("behaviour", HostileDnsServer.BEHAVIOURS)
def test_dns_replies_that_never_end_are_unreadable(run: Any, make_catalog: MakeCatalog,
                                                   behaviour: str) -> None:
    server = HostileDnsServer(behaviour)
    outcome = run(hostile_run(server, {"url": "dns://site.example.org"}, make_catalog,
                              resolver="127.0.0.1:{port}"), 30)
    # answered with bytes that are no reply: not "did not answer" (dns.timeout)
    assert outcome.result.reason == "dns.servfail", outcome.result.detail
    assert "none a DNS reply" in outcome.result.detail
    assert server.queries >= 2  # A and AAAA were answered, with poison
    bounded(outcome, within=3.5)


def test_stun_flood_is_survived(run: Any, make_catalog: MakeCatalog) -> None:
    server = StunServer("flood", flood=200)
    outcome = run(hostile_run(server, {"url": "stun://127.0.0.1:{port}"}, make_catalog,
                              attempts=5))
    assert outcome.result.reason == "ok"
    assert outcome.phase("stun")["malformed"] >= 100
    bounded(outcome, within=4.0)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_a_401_with_an_oversized_realm_is_an_answer_not_silence(
    run: Any, make_catalog: MakeCatalog, transport: str
) -> None:
    # Our transaction id, 401, REALM and NONCE, but a REALM of 1,000 bytes (RFC 8489: 763 at
    # most): something answered, as no TURN server would. Not udp.timeout. Discarded as it
    # comes (a forgery may precede the real answer), so it is judged at the timeout.
    server = HostileTurnServer("long_realm", realm_bytes=1000)
    url = "turn://127.0.0.1:{port}" + ("?transport=tcp" if transport == "tcp" else "")
    outcome = run(hostile_run(server, {"url": url}, make_catalog))
    assert outcome.result.reason == "turn.unexpected", outcome.result.detail
    turn = outcome.phase("turn")
    assert turn["failure"] == "protocol_error"
    assert "Realm longer than 763 bytes" in turn["error"]
    assert turn["malformed"] >= 1 and server.requests >= 1
    bounded(outcome, within=2.5)


def test_quic_junk_is_a_timeout(run: Any, make_catalog: MakeCatalog, ca: TestCA,
                                ca_path: str) -> None:
    server = QuicServer("junk", ca=ca, name=NAME)
    outcome = run(hostile_run(server, {"url": f"quic://{NAME}:{{port}}", "address": "127.0.0.1"},
                              make_catalog, ca_file=ca_path))
    assert outcome.result.reason == "quic.timeout"
    bounded(outcome, within=4.0)


# --- the whole command line against every attack at once ----------------------------------


def test_command_line_survives_every_attack(tmp_path: Path, ca: TestCA, ca_path: str) -> None:
    servers = [HostileServer(b, ca=ca, name=NAME, interval=0.25)
               for b in ("endless_body", "slowloris", "slow_headers", "huge_chain",
                         "header_bomb", "header_line")]
    dns_server = HostileDnsServer("pointer_cycle")
    with Background(*servers, dns_server):
        targets = [
            {"url": (f"tls://{NAME}:{s.port}" if s.behaviour in ("slowloris", "huge_chain")
                     else f"https://{NAME}:{s.port}/"),
             "address": "127.0.0.1", "name": s.behaviour} for s in servers
        ] + [{"url": "dns://site.example.org", "name": "dns"}]
        document = {"version": 1,
                    "settings": {"timeout": "1s", "attempts": 2, "ca_file": ca_path,
                                 "resolver": f"127.0.0.1:{dns_server.port}"},
                    "platforms": {"hostile": {"features": {"all": targets}}}}
        catalog = tmp_path / "hostile.yaml"
        catalog.write_text(json.dumps(document))
        start = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-X", "dev", "-m", "probe", "run", "-c", str(catalog), "-f", "jsonl",
             "-o", str(tmp_path / "out.jsonl")],
            capture_output=True, text=True, timeout=120, check=False)
        seconds = time.monotonic() - start
    print(f"\nsix hostile servers and a poisoned resolver, attempts 2: {seconds:.1f} s")
    assert "Traceback" not in done.stderr and "Exception" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 1, done.stderr[-3000:]
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    reasons = {t["name"]: t["reason"] for t in printed if "record" not in t}
    assert reasons == {"endless_body": "ok", "slowloris": "tls.timeout",
                       "slow_headers": "http.timeout", "huge_chain": reasons["huge_chain"],
                       "header_bomb": reasons["header_bomb"],
                       "header_line": reasons["header_line"], "dns": "dns.servfail"}
    assert reasons["huge_chain"].startswith("tls.")
    assert reasons["header_bomb"].startswith("http.") and reasons["header_line"].startswith("http.")
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    targets = [t for t in lines if "record" not in t]
    assert len(targets) == 7 and all(t["url"] for t in targets)
    assert lines[-1] == {"record": "end", **lines[-1]} and lines[-1]["interrupted"] is False


def test_mock_refuses_unknown_behaviours_and_options() -> None:
    with pytest.raises(ValueError):
        HostileServer("friendly")
    with pytest.raises(ValueError):
        HostileServer("slowloris", speed=1)
    with pytest.raises(ValueError):
        HostileDnsServer("ok")
