"""The quic layer against the mock QUIC server on loopback, through the Runner and the engine."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from probe import catalog, engine
from probe.layers import Context
from probe.layers.quic import version_ping
from probe.mock.certs import TestCA
from probe.mock.quic import QuicServer
from probe.results import TargetResult
from probe.runner import Runner

NAME = "quic.test"


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture(scope="module")
def ca_file(ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield str(ca.write_ca(tmp_path_factory.mktemp("quic") / "ca.pem"))


def catalog_text(url: str, ca_file: str, timeout: float, extra: str = "") -> str:
    return f"""
version: 1
settings: {{timeout: {timeout}s, attempts: 1, ca_file: "{ca_file}"}}
platforms:
  p:
    features:
      f:
        - {{url: "{url}", address: 127.0.0.1{extra}}}
"""


async def run_target(text: str) -> tuple[TargetResult, float]:
    runner = Runner(loaded=catalog.loads(text))
    start = time.perf_counter()
    await runner.run()
    elapsed = time.perf_counter() - start
    run = runner.finish()
    assert len(run.targets) == 1
    return run.targets[0], elapsed


async def against(behaviour: str, ca: TestCA, ca_file: str, timeout: float = 3.0,
                  extra: str = "", **options: Any) -> tuple[TargetResult, float]:
    server = QuicServer(behaviour, ca=ca, name=NAME, **options)
    await server.start()
    try:
        url = f"quic://{NAME}:{server.port}"
        return await run_target(catalog_text(url, ca_file, timeout, extra))
    finally:
        await server.stop()


def quic_phase(result: TargetResult) -> dict[str, Any]:
    return result.phases["quic"]


def test_ok(ca: TestCA, ca_file: str) -> None:
    async def main() -> None:
        result, _ = await against("ok", ca, ca_file)
        assert (result.status, result.reason) == ("ok", "ok"), result.detail
        phase = quic_phase(result)
        assert phase["alpn"] == "h3" and phase["version"] == "0x00000001"
        assert phase["server_packet"] is True
        assert 0 < phase["ms_first_packet"] <= phase["ms"]
        assert "dns" not in result.phases  # address: skips the dns layer
        assert result.observation.diagnosis == {}
        # nothing left running: timers cancelled, sockets closed
        await asyncio.sleep(0.05)
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())


def test_silent_is_a_timeout_without_version_negotiation(ca: TestCA, ca_file: str) -> None:
    async def main() -> None:
        result, elapsed = await against("silent", ca, ca_file, timeout=1.0)
        assert (result.status, result.reason) == ("blocked", "quic.timeout")
        phase = quic_phase(result)
        assert phase["failure"] == "timeout" and phase["server_packet"] is False
        assert "no server packet within 1.0 s" in result.detail
        vn = result.observation.diagnosis["version_negotiation"]
        assert vn.ok is False and vn.failure == "timeout"
        assert elapsed >= 1.0

    asyncio.run(main())


def test_close_reports_code_and_reason_promptly(ca: TestCA, ca_file: str) -> None:
    async def main() -> None:
        result, elapsed = await against("close", ca, ca_file, close_code=0x2,
                                        close_reason="policy says no")
        assert (result.status, result.reason) == ("blocked", "quic.closed")
        phase = quic_phase(result)
        assert phase["failure"] == "peer_closed" and phase["closed_by"] == "peer"
        assert phase["error_code"] == 0x2 and phase["reason"] == "policy says no"
        assert "CONNECTION_REFUSED (0x2)" in result.detail and "policy says no" in result.detail
        assert result.observation.diagnosis == {}  # not a timeout: no ping
        assert elapsed < 1.5

    asyncio.run(main())


def test_untrusted_certificate(ca: TestCA, ca_file: str) -> None:
    async def main() -> None:
        result, elapsed = await against("untrusted", ca, ca_file)
        assert (result.status, result.reason) == ("blocked", "tls.untrusted")
        phase = quic_phase(result)
        assert phase["failure"] == "untrusted_certificate" and phase["closed_by"] == "local"
        assert phase["error_code"] == 0x100 + 42  # bad_certificate
        assert phase["server_packet"] is True
        assert elapsed < 1.5

    asyncio.run(main())


def test_wrong_name(ca: TestCA, ca_file: str) -> None:
    async def main() -> None:
        result, elapsed = await against("wrong_name", ca, ca_file)
        assert (result.status, result.reason) == ("blocked", "tls.hostname")
        assert quic_phase(result)["failure"] == "hostname_mismatch"
        assert elapsed < 1.5

    asyncio.run(main())


def test_server_refusing_our_alpn(ca: TestCA, ca_file: str) -> None:
    async def main() -> None:
        result, elapsed = await against("alpn_refuse", ca, ca_file)
        assert (result.status, result.reason) == ("blocked", "quic.closed")
        phase = quic_phase(result)
        assert phase["failure"] == "alpn_refused" and phase["alpn_refused"] is True
        assert phase["error_code"] == 0x178
        assert "ALPN h3" in result.detail
        assert elapsed < 1.5

    asyncio.run(main())


def test_target_alpn_option_is_offered(ca: TestCA, ca_file: str) -> None:
    async def main() -> None:
        result, _ = await against("ok", ca, ca_file, extra=", alpn: [doq]")
        assert quic_phase(result)["failure"] == "alpn_refused"
        assert "ALPN doq" in result.detail
        result, _ = await against("ok", ca, ca_file, extra=", alpn: [doq, h3]")
        assert result.reason == "ok" and quic_phase(result)["alpn"] == "h3"

    asyncio.run(main())


def test_closed_port_is_unreachable(ca_file: str) -> None:
    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        result, elapsed = await run_target(catalog_text(f"quic://{NAME}:{port}", ca_file, 3.0))
        assert (result.status, result.reason) == ("blocked", "udp.unreachable")
        assert quic_phase(result)["failure"] == "port_unreachable"
        assert elapsed < 1.5

    asyncio.run(main())


def test_vn_only_points_at_sni_filtering(ca: TestCA, ca_file: str) -> None:
    async def main() -> None:
        result, _ = await against("vn_only", ca, ca_file, timeout=1.0)
        assert result.status == "blocked"
        # quic.sni_filtered once the verdict rule reads the diagnosis; quic.timeout before that
        assert result.reason in ("quic.timeout", "quic.sni_filtered")
        assert quic_phase(result)["failure"] == "timeout"
        vn = result.observation.diagnosis["version_negotiation"]
        assert vn.ok is True
        assert vn.versions == ["0x00000001", "0x6b3343cf"]
        assert vn.ms is not None and vn.ms < 500

    asyncio.run(main())


def test_junk_answers_are_no_crash(ca: TestCA, ca_file: str) -> None:
    async def main() -> None:
        result, _ = await against("junk", ca, ca_file, timeout=1.0)
        assert result.status == "blocked" and result.reason == "quic.timeout"
        phase = quic_phase(result)
        assert phase["datagrams"] >= 1 and phase["server_packet"] is False
        assert "none a valid QUIC packet" in result.detail
        assert result.observation.diagnosis["version_negotiation"].ok is False

    asyncio.run(main())


def test_version_ping_answered_by_a_real_server(ca: TestCA) -> None:
    async def main() -> None:
        for behaviour, answered in (("ok", True), ("close", True), ("silent", False)):
            server = QuicServer(behaviour, ca=ca, name=NAME)
            await server.start()
            try:
                phase = await version_ping("127.0.0.1", server.port, 0.6)
            finally:
                await server.stop()
            assert phase.ok is answered, (behaviour, phase)
            assert (phase.version_sent or "").endswith("a")

    asyncio.run(main())


def test_named_target_through_the_resolver(ca: TestCA, ca_file: str) -> None:
    # A name (no address:) goes through the dns layer, here a mock resolver on loopback; the
    # diagnosis pings the address the samples resolved.
    async def main() -> None:
        from probe.mock.dns import DnsServer

        resolver = DnsServer("ok", records={NAME: ["127.0.0.1"]})
        await resolver.start()
        server = QuicServer("ok", ca=ca, name=NAME)
        await server.start()
        try:
            loaded = catalog.loads(f"""
version: 1
settings: {{timeout: 1s, attempts: 2, ca_file: "{ca_file}", resolver: "127.0.0.1:{resolver.port}"}}
platforms:
  p:
    features:
      f: ["quic://{NAME}:{server.port}"]
""")
            job = next(loaded.jobs())
            ctx = Context(settings=loaded.settings)
            observation = await engine.measure(job, ctx)
            assert [s.phases["quic"].ok for s in observation.samples] == [True, True]
            assert all("dns" in s.phases for s in observation.samples)
            server.behaviour = "vn_only"
            observation = await engine.measure(job, ctx)
            await ctx.aclose()
        finally:
            await server.stop()
            await resolver.stop()
        assert [s.phases["quic"].failure for s in observation.samples] == ["timeout", "timeout"]
        assert observation.diagnosis["version_negotiation"].ok is True

    asyncio.run(main())


def test_ipv6_loopback(ca: TestCA, ca_file: str) -> None:
    async def main() -> None:
        server = QuicServer("ok", ca=ca, name=NAME, host="::1")
        try:
            await server.start()
        except OSError:
            pytest.skip("no IPv6 loopback here")
        try:
            text = catalog_text(f"quic://{NAME}:{server.port}", ca_file, 3.0).replace(
                "address: 127.0.0.1", 'address: "::1"')
            result, _ = await run_target(text)
        finally:
            await server.stop()
        assert result.reason == "ok", result.detail

    asyncio.run(main())


def test_behaviour_switch_while_running(ca: TestCA, ca_file: str, tmp_path: Path) -> None:
    async def main() -> None:
        server = QuicServer("ok", ca=ca, name=NAME)
        await server.start()
        try:
            text = catalog_text(f"quic://{NAME}:{server.port}", ca_file, 3.0)
            assert (await run_target(text))[0].reason == "ok"
            server.behaviour = "close"
            assert (await run_target(text))[0].reason == "quic.closed"
        finally:
            await server.stop()
            await server.stop()  # idempotent

    asyncio.run(main())


def test_unknown_behaviour_and_option() -> None:
    with pytest.raises(ValueError):
        QuicServer("nope")
    with pytest.raises(ValueError):
        QuicServer("ok", colour="red")
