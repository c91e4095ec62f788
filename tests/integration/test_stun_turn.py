"""The stun and turn layers against the STUN/TURN mock on loopback, through engine and classifier."""

from __future__ import annotations

import random
import re
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from probe.catalog import LoadedCatalog
from probe.layers import stun as stun_layer
from probe.mock.stun import StunServer
from probe.results import Run, TargetResult
from probe.runner import Runner

Run_ = Callable[..., Any]
MakeCatalog = Callable[..., LoadedCatalog]


async def judged(loaded: LoadedCatalog) -> tuple[Run, float]:
    runner = Runner(loaded=loaded)
    start = time.perf_counter()
    await runner.run()
    return runner.finish(), time.perf_counter() - start


async def against(
    make_catalog: MakeCatalog, behaviour: str, url: str, *, host: str = "127.0.0.1",
    target: dict[str, Any] | None = None, server_options: dict[str, Any] | None = None,
    **settings: Any,
) -> tuple[TargetResult, StunServer, float]:
    """One target (`url` with {host} and {port} filled in) against a fresh mock server."""
    server = StunServer(behaviour, host=host, **(server_options or {}))
    await server.start()
    try:
        settings = {"timeout": "0.5s", "attempts": 3, **settings}
        entry = {"url": url.format(host=host, port=server.port), **(target or {})}
        run, took = await judged(make_catalog(entry, **settings))
    finally:
        await server.stop()
    assert len(run.targets) == 1
    return run.targets[0], server, took


def phase(result: TargetResult, layer: str) -> dict[str, Any]:
    return result.phases[layer]


STUN = "stun://{host}:{port}"
TURN_UDP = "turn://{host}:{port}"
TURN_TCP = "turn://{host}:{port}?transport=tcp"


# --- stun ----------------------------------------------------------------------------------


def test_stun_ok(run: Run_, make_catalog: MakeCatalog) -> None:
    result, server, _ = run(against(make_catalog, "ok", STUN))
    assert (result.status, result.reason) == ("ok", "ok")
    facts = phase(result, "stun")
    assert (facts["sent"], facts["answered"], facts["lost"], facts["pattern"]) == (3, 3, 0, "+++")
    assert len(facts["rtt_ms"]) == 3 and facts["rtt_min_ms"] <= facts["rtt_median_ms"]
    assert facts["mapped_address_returned"] is True
    assert facts["nat"] is False  # loopback: the server saw our own socket's address
    assert server.requests == 3 and len(server.clients) == 1  # one socket for the whole train
    assert result.samples == 1  # the engine called the layer once: its requests are the samples


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
@pytest.mark.parametrize("url", ["stun://[::1]:{port}", "turn://[::1]:{port}?transport=tcp"])
def test_ipv6(run: Run_, make_catalog: MakeCatalog, url: str) -> None:
    result, server, _ = run(against(make_catalog, "ok", url.replace("{host}", "::1"), host="::1"))
    assert result.reason == "ok"
    assert {ip for ip, _ in server.clients} == {"::1"}
    if url.startswith("stun"):
        assert phase(result, "stun")["nat"] is False


def test_named_target_with_address_skips_the_resolver(
    run: Run_, make_catalog: MakeCatalog
) -> None:
    result, _, _ = run(against(make_catalog, "ok", "stun://stun.mock.test:{port}",
                               target={"address": "127.0.0.1"}))
    assert result.reason == "ok" and "dns" not in result.phases


def test_stun_silent_is_udp_timeout(run: Run_, make_catalog: MakeCatalog) -> None:
    result, server, _ = run(against(make_catalog, "silent", STUN))
    assert (result.status, result.reason) == ("blocked", "udp.timeout")
    facts = phase(result, "stun")
    assert (facts["sent"], facts["answered"], facts["lost"], facts["loss"]) == (3, 0, 3, 1.0)
    assert server.requests == 3


def test_stun_lossy_counts_exactly_the_dropped_requests(
    run: Run_, make_catalog: MakeCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stun_layer, "SPACING_S", 0.02)  # 30 requests in 0.6 s
    result, _, _ = run(against(make_catalog, "lossy", STUN, attempts=30,
                               server_options={"loss": 0.3, "seed": 7}))
    # The mock draws from random.Random(seed) once per request, in order: replay the draws.
    draws = random.Random(7)
    expected = "".join("." if draws.random() < 0.3 else "+" for _ in range(30))
    facts = phase(result, "stun")
    assert facts["pattern"] == expected
    assert facts["lost"] == expected.count(".") and 4 <= facts["lost"] <= 16
    assert facts["loss"] == round(expected.count(".") / 30, 4)
    assert len(facts["rtt_ms"]) == facts["answered"] == 30 - facts["lost"]
    assert result.status != "blocked"  # loss is judged against thresholds, not failed here


def test_stun_delay_within_timeout_is_slow_but_ok(run: Run_, make_catalog: MakeCatalog) -> None:
    result, _, _ = run(against(make_catalog, "delay", STUN, timeout="1s",
                               server_options={"delay": 0.3}))
    assert result.reason == "ok"
    assert phase(result, "stun")["rtt_min_ms"] >= 300


# Late answers are counted with a fake clock in tests/unit/test_flow.py, not with 100 ms margins.


def test_stun_sustained_cutoff(run: Run_, make_catalog: MakeCatalog) -> None:
    result, _, took = run(against(make_catalog, "cutoff", STUN, target={"sustain": "2s"},
                                  server_options={"n": 2}))
    assert (result.status, result.reason) == ("blocked", "udp.cutoff")
    facts = phase(result, "stun")
    assert facts["sent"] == 8 and facts["pattern"] == "++......"  # 4 per second for 2 s
    assert facts["spacing_ms"] == 250
    assert facts["silent_from_ms"] == pytest.approx(500, abs=100)
    assert 2.0 < took < 6.0


def test_stun_sustained_exchange_that_keeps_answering_is_ok(
    run: Run_, make_catalog: MakeCatalog
) -> None:
    result, _, _ = run(against(make_catalog, "ok", STUN, target={"sustain": "1s"}, attempts=1))
    assert result.reason == "ok"
    assert phase(result, "stun")["pattern"] == "++++"


# The cut-off rule's table is in tests/unit/test_flow.py (probe/wire/flow.py).


def test_stun_malformed_answers_are_no_answers(run: Run_, make_catalog: MakeCatalog) -> None:
    result, _, _ = run(against(make_catalog, "malformed", STUN))
    assert result.reason == "udp.timeout"
    facts = phase(result, "stun")
    assert facts["malformed"] == 3 and facts["answered"] == 0


def test_stun_flood_of_junk_is_counted_and_survived(run: Run_, make_catalog: MakeCatalog) -> None:
    result, _, _ = run(against(make_catalog, "flood", STUN, server_options={"flood": 20}))
    assert result.reason == "ok"
    facts = phase(result, "stun")
    assert facts["answered"] == 3 and facts["malformed"] == 60 and facts["duplicates"] == 0


@pytest.mark.parametrize(("behaviour", "code"), [("turn_401", 401), ("bad_request", 400)])
def test_stun_error_answers_still_prove_reachability(
    run: Run_, make_catalog: MakeCatalog, behaviour: str, code: int
) -> None:
    result, _, _ = run(against(make_catalog, behaviour, STUN))
    assert result.reason == "ok"
    facts = phase(result, "stun")
    assert (facts["error_responses"], facts["error_code"]) == (3, code)
    assert facts["mapped_address_returned"] is False


def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_stun_icmp_port_unreachable(run: Run_, make_catalog: MakeCatalog) -> None:
    port = closed_udp_port()
    result_run, took = run(judged(make_catalog(f"stun://127.0.0.1:{port}", timeout="5s")))
    result = result_run.targets[0]
    assert (result.status, result.reason) == ("blocked", "udp.unreachable")
    facts = phase(result, "stun")
    assert facts["failure"] == "port_unreachable" and facts["icmp_errors"] >= 1
    assert took < 3.0  # the ICMP error ends the wait: no 5 s timeout


# --- turn ----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [TURN_UDP, TURN_TCP], ids=["udp", "tcp"])
@pytest.mark.parametrize("behaviour", ["ok", "turn_401"])
def test_turn_401_proves_a_turn_server(
    run: Run_, make_catalog: MakeCatalog, url: str, behaviour: str
) -> None:
    result, server, _ = run(against(make_catalog, behaviour, url))
    assert (result.status, result.reason) == ("ok", "ok")
    facts = phase(result, "turn")
    assert (facts["error_code"], facts["realm"], facts["nonce"]) == (401, True, True)
    assert facts["software"] == "probe mock STUN"
    assert facts["transport"] == ("tcp" if "tcp" in url else "udp")
    assert server.requests == 3  # one Allocate per sample
    if "tcp" in url:
        assert result.phases["tcp"]["ok"] is True


@pytest.mark.parametrize("url", [TURN_UDP, TURN_TCP], ids=["udp", "tcp"])
def test_turn_silent_is_udp_timeout(run: Run_, make_catalog: MakeCatalog, url: str) -> None:
    result, _, _ = run(against(make_catalog, "silent", url, attempts=1))
    assert (result.status, result.reason) == ("blocked", "udp.timeout")
    assert phase(result, "turn")["failure"] == "timeout"


def test_turn_udp_retransmits_on_the_rfc_schedule(run: Run_, make_catalog: MakeCatalog) -> None:
    # RTO 500 ms doubling: sends at 0, 0.5 and 1.5 s within a 2 s timeout; same transaction.
    result, server, _ = run(against(make_catalog, "silent", TURN_UDP, attempts=1, timeout="2s"))
    assert phase(result, "turn")["sent"] == 3
    assert server.requests == 3 and len(server.clients) == 1


@pytest.mark.parametrize("url", [TURN_UDP, TURN_TCP], ids=["udp", "tcp"])
def test_turn_other_answer_is_a_protocol_error(
    run: Run_, make_catalog: MakeCatalog, url: str
) -> None:
    result, _, _ = run(against(make_catalog, "bad_request", url, attempts=1))
    assert result.reason == "turn.unexpected"
    facts = phase(result, "turn")
    assert (facts["failure"], facts["error_code"]) == ("protocol_error", 400)
    assert "400 Bad Request" in result.detail


@pytest.mark.parametrize("url", [TURN_UDP, TURN_TCP], ids=["udp", "tcp"])
def test_turn_survives_a_flood(run: Run_, make_catalog: MakeCatalog, url: str) -> None:
    result, _, _ = run(against(make_catalog, "flood", url, attempts=1))
    assert result.reason == "ok"
    assert phase(result, "turn")["malformed"] >= 5


@pytest.mark.parametrize("url", [TURN_UDP, TURN_TCP], ids=["udp", "tcp"])
def test_turn_malformed_is_no_answer(run: Run_, make_catalog: MakeCatalog, url: str) -> None:
    result, _, _ = run(against(make_catalog, "malformed", url, attempts=1))
    assert result.status == "blocked"
    assert phase(result, "turn")["failure"] in ("timeout", "protocol_error")


def test_turn_udp_icmp_unreachable(run: Run_, make_catalog: MakeCatalog) -> None:
    port = closed_udp_port()
    result_run, took = run(judged(make_catalog(f"turn://127.0.0.1:{port}", timeout="5s",
                                               attempts=1)))
    assert result_run.targets[0].reason == "udp.unreachable"
    assert took < 3.0


def test_turn_tcp_refused_is_tcp_reset(run: Run_, make_catalog: MakeCatalog) -> None:
    with socket.socket() as sock:  # bound, not listening: the kernel answers SYNs with RST
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        result_run, _ = run(judged(make_catalog(f"turn://127.0.0.1:{port}?transport=tcp",
                                                attempts=1)))
    result = result_run.targets[0]
    assert (result.reason, result.phases["tcp"]["failure"]) == ("tcp.reset", "connection_refused")
    assert "turn" not in result.phases


# --- privacy -------------------------------------------------------------------------------


def leaks(document: str, clients: set[tuple[str, int]]) -> list[str]:
    """Every way a client address could show up in a result document."""
    found = []
    for ip, port in clients:
        packed = socket.inet_aton(ip)
        xored = bytes(a ^ b for a, b in zip(packed, bytes.fromhex("2112a442")))
        for needle in (ip, packed.hex(), xored.hex()):
            if needle in document:
                found.append(needle)
        if re.search(rf"(?<![\w.]){port}(?![\w.])", document):
            found.append(str(port))
    return found


def test_leak_detector_finds_a_planted_address() -> None:
    clients = {("127.0.0.1", 40123)}
    assert leaks('{"software": "you are 127.0.0.1:40123"}', clients) == ["127.0.0.1", "40123"]
    assert leaks('{"mapped": "7f000001", "port": 40123}', clients) == ["7f000001", "40123"]
    assert leaks('{"rtt_ms": 40123.5, "sha": "a401234"}', clients) == []


@pytest.mark.parametrize("url", [STUN, TURN_UDP, TURN_TCP], ids=["stun", "turn-udp", "turn-tcp"])
def test_mapped_address_never_reaches_the_result(
    run: Run_, make_catalog: MakeCatalog, url: str
) -> None:
    # The mock listens on 127.0.0.2, so the target URL names 127.0.0.2; the kernel picks
    # 127.0.0.1 as our source address, which the reveal server echoes in every attribute.
    async def scenario() -> tuple[Run, StunServer]:
        server = StunServer("reveal", host="127.0.0.2")
        await server.start()
        try:
            run_, _ = await judged(make_catalog(url.format(host="127.0.0.2", port=server.port),
                                                timeout="1s", attempts=3))
        finally:
            await server.stop()
        return run_, server

    result_run, server = run(scenario())
    result = result_run.targets[0]
    assert result.reason == "ok"
    assert server.clients and {ip for ip, _ in server.clients} == {"127.0.0.1"}
    layer = "stun" if url == STUN else "turn"
    if layer == "stun":
        assert phase(result, "stun")["mapped_address_returned"] is True
    else:
        assert phase(result, "turn")["software"] == "you are <address>"
    for document in (result.model_dump_json(), result_run.to_json()):
        assert leaks(document, server.clients) == []


# --- the mock's own contract ---------------------------------------------------------------


def test_mock_refuses_unknown_behaviours_and_options() -> None:
    with pytest.raises(ValueError):
        StunServer("nonsense")
    with pytest.raises(ValueError):
        StunServer("ok", speed=3)


def test_mock_survives_garbage_and_switches_behaviour(run: Run_, make_catalog: MakeCatalog) -> None:
    async def scenario() -> tuple[TargetResult, TargetResult]:
        server = StunServer("silent")
        await server.start()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for junk in (b"", b"\x00" * 20, b"GET / HTTP/1.1\r\n\r\n", b"\xff" * 2000):
                    sock.sendto(junk, ("127.0.0.1", server.port))
            with socket.create_connection(("127.0.0.1", server.port)) as tcp:
                tcp.sendall(b"\x16\x03\x01\x00\x05hello")  # TLS, not STUN: dropped
            url = f"stun://127.0.0.1:{server.port}"
            first, _ = await judged(make_catalog(url, timeout="0.5s", attempts=1))
            server.behaviour = "ok"
            second, _ = await judged(make_catalog(url, timeout="0.5s", attempts=1))
        finally:
            await server.stop()
            await server.stop()  # idempotent
        return first.targets[0], second.targets[0]

    first, second = run(scenario())
    assert (first.reason, second.reason) == ("udp.timeout", "ok")


def test_include_ip_keeps_the_mapped_address_only_when_asked(run: Any) -> None:
    from probe import catalog, engine
    from probe.layers import Context
    from probe.mock.stun import StunServer

    async def scenario(include_ip: bool) -> Any:
        server = StunServer("ok", host="127.0.0.2")
        await server.start()
        try:
            loaded = catalog.loads(
                '{"version": 1, "settings": {"timeout": "1s", "attempts": 2}, "platforms": {"t": '
                f'{{"features": {{"f": ["stun://127.0.0.2:{server.port}"]}}}}}}}}')
            ctx = Context(settings=loaded.settings, include_ip=include_ip)
            try:
                return await engine.measure(next(loaded.jobs()), ctx)
            finally:
                await ctx.aclose()
        finally:
            await server.stop()

    assert run(scenario(False)).samples[0].phases["stun"].dump().get("mapped_address") is None
    kept = run(scenario(True)).samples[0].phases["stun"].mapped_address
    assert kept is not None and kept.startswith("127.0.0.1:")
