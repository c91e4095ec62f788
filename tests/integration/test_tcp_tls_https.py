"""tcp, tls and https layers against loopback mock servers, through the Runner: one reason per behaviour."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from probe.catalog import LoadedCatalog
from probe.mock.tcp import TCPServer
from probe.mock.tls import HTTPSServer, TLSServer
from probe.results import Run, TargetResult
from probe.runner import Runner

TIMEOUT = 0.5
MakeCatalog = Callable[..., LoadedCatalog]


async def run_catalog(loaded: LoadedCatalog, concurrency: int | None = None) -> Run:
    runner = Runner(loaded=loaded, concurrency=concurrency)
    await runner.run()
    return runner.finish()


async def measure_one(server: Any, target: dict[str, Any], make_catalog: MakeCatalog,
                      **settings: Any) -> TargetResult:
    """Start `server`, run one target against it (URL with {port}), stop it."""
    await server.start()
    try:
        target = {**target, "url": target["url"].format(port=server.port)}
        settings = {"timeout": TIMEOUT, "attempts": 1, **settings}
        run = await run_catalog(make_catalog(target, **settings))
    finally:
        await server.stop()
    [result] = run.targets
    return result


# --- tcp -------------------------------------------------------------------------------------


def test_tcp_ok_records_kernel_rtt_and_port(run: Any, make_catalog: MakeCatalog) -> None:
    server = TCPServer("ok")
    result = run(measure_one(server, {"url": "tcp://127.0.0.1:{port}"}, make_catalog))
    assert (result.status, result.reason) == ("ok", "ok")
    tcp = result.observation.samples[0].phases["tcp"]
    assert tcp.port == server.port
    assert tcp.rtt_ms is not None and tcp.rtt_ms >= 0


def test_tcp_refused_port_is_tcp_reset(run: Any, make_catalog: MakeCatalog) -> None:
    result = run(measure_one(TCPServer("refuse"), {"url": "tcp://127.0.0.1:{port}"},
                             make_catalog))
    assert (result.status, result.reason) == ("blocked", "tcp.reset")
    assert result.observation.samples[0].phases["tcp"].failure == "connection_refused"


def test_tcp_full_accept_queue_is_tcp_timeout(run: Any, make_catalog: MakeCatalog) -> None:
    result = run(measure_one(TCPServer("silent"), {"url": "tcp://127.0.0.1:{port}"},
                             make_catalog))
    assert (result.status, result.reason) == ("blocked", "tcp.timeout")
    assert result.observation.samples[0].phases["tcp"].ms >= TIMEOUT * 1000 * 0.9


def test_200_silent_targets_run_in_parallel(run: Any, make_catalog: MakeCatalog) -> None:
    """200 dropped SYNs at concurrency 64, timeout 1 s: about 4 timeouts, not 200."""

    async def scenario() -> tuple[Run, float]:
        async with TCPServer("silent") as server:
            targets = [{"url": f"tcp://127.0.0.1:{server.port}", "name": f"t{i}"}
                       for i in range(200)]
            loaded = make_catalog(*targets, timeout=1, attempts=1, concurrency=64)
            start = time.perf_counter()
            result = await run_catalog(loaded)
            return result, time.perf_counter() - start

    result, wall = run(scenario())
    print(f"\n200 silent targets, concurrency 64, timeout 1 s: {wall:.2f} s wall")
    assert len(result.targets) == 200
    assert {t.reason for t in result.targets} == {"tcp.timeout"}
    assert wall < 30  # serially this would take 200 s


# --- tls -------------------------------------------------------------------------------------

TLS_REASONS = [
    ("ok", "ok"),
    ("reset_after_hello", "tls.reset"),
    ("silent_after_hello", "tls.timeout"),
    ("close_after_hello", "tls.eof"),
    ("untrusted", "tls.untrusted"),
    ("wrong_name", "tls.hostname"),
    ("alert", "tls.alert"),
]


@pytest.mark.parametrize(("behaviour", "reason"), TLS_REASONS)
def test_tls_behaviour_gives_its_reason(
    behaviour: str, reason: str, run: Any, make_catalog: MakeCatalog, test_ca: Any, ca_file: str,
) -> None:
    server = TLSServer(behaviour, ca=test_ca, name="mock.test")
    target = {"url": "tls://mock.test:{port}", "address": "127.0.0.1"}
    result = run(measure_one(server, target, make_catalog, ca_file=ca_file))
    assert result.reason == reason, result.detail
    tls = result.observation.samples[0].phases["tls"]
    assert tls.sni == "mock.test"
    if behaviour == "ok":
        assert (tls.version or "").startswith("TLS")
        assert tls.issuer == "CN=probe test CA"
        assert len(tls.spki_sha256 or "") == 64
    # The SNI swap is reported after timeout/reset/eof/alert only, never after a certificate error.
    diagnosis = result.observation.diagnosis
    if behaviour in ("reset_after_hello", "silent_after_hello", "close_after_hello", "alert"):
        control = diagnosis["sni_control"]
        assert control.sni == "example.com"
        # this mock treats every SNI alike: only an alert means the server was reached
        assert control.ok is (behaviour == "alert")
    else:
        assert "sni_control" not in diagnosis


def test_sni_filter_is_diagnosed_by_the_control(
    run: Any, make_catalog: MakeCatalog, test_ca: Any, ca_file: str,
) -> None:
    """A server that resets one SNI only: the control SNI gets a ServerHello."""
    server = TLSServer("ok", ca=test_ca, name="blocked.test",
                       sni_behaviours={"blocked.test": "reset_after_hello"})
    target = {"url": "tls://blocked.test:{port}", "address": "127.0.0.1"}
    result = run(measure_one(server, target, make_catalog, ca_file=ca_file, attempts=2,
                             control_sni="control.test"))
    assert result.observation.samples[0].phases["tls"].failure == "connection_reset"
    control = result.observation.diagnosis["sni_control"]
    assert control.ok and control.sni == "control.test"
    assert control.reply == "server_hello"
    # Taken before the samples, so a residual block triggered by them cannot spoil it.
    assert server.hellos == ["control.test", "blocked.test", "blocked.test"]
    assert result.reason in ("tls.reset", "tls.sni_filtered")


def test_https_sni_filter_is_diagnosed_too(
    run: Any, make_catalog: MakeCatalog, test_ca: Any, ca_file: str,
) -> None:
    server = HTTPSServer("ok", ca=test_ca, name="blocked.test",
                         sni_behaviours={"blocked.test": "silent_after_hello"})
    target = {"url": "https://blocked.test:{port}/", "address": "127.0.0.1"}
    result = run(measure_one(server, target, make_catalog, ca_file=ca_file))
    assert result.observation.samples[0].phases["tls"].failure == "timeout"
    assert "http" not in result.observation.samples[0].phases
    assert result.observation.diagnosis["sni_control"].ok
    assert result.reason in ("tls.timeout", "tls.sni_filtered")


# --- https -----------------------------------------------------------------------------------


def https(behaviour: str, path: str, run: Any, make_catalog: MakeCatalog, test_ca: Any,
          ca_file: str, **options: Any) -> TargetResult:
    server = HTTPSServer(behaviour, ca=test_ca, name="mock.test", **options)
    target = {"url": "https://mock.test:{port}" + path, "address": "127.0.0.1"}
    return run(measure_one(server, target, make_catalog, ca_file=ca_file))


def test_https_ok_1mib_with_throughput(run: Any, make_catalog: MakeCatalog, test_ca: Any,
                                       ca_file: str) -> None:
    result = https("ok", "/1mib", run, make_catalog, test_ca, ca_file)
    assert (result.status, result.reason) == ("ok", "ok"), result.detail
    phases = result.observation.samples[0].phases
    assert list(phases) == ["tcp", "tls", "http"]  # an address is given: no dns phase
    http = phases["http"]
    assert http.status == 200 and http.bytes == 1 << 20
    assert http.http_version == "HTTP/1.1" and phases["tls"].alpn == "http/1.1"
    assert http.throughput > 1e6 and http.ttfb_ms is not None
    assert not http.truncated


def test_https_block_page_is_http_status(run: Any, make_catalog: MakeCatalog, test_ca: Any,
                                         ca_file: str) -> None:
    result = https("forbidden", "/", run, make_catalog, test_ca, ca_file)
    assert (result.status, result.reason) == ("blocked", "http.status")
    http = result.observation.samples[0].phases["http"]
    assert http.status == 403 and http.failure == "http_status"
    assert http.bytes == len(HTTPSServer.BLOCK_PAGE)


def test_https_redirect_keeps_location_host(run: Any, make_catalog: MakeCatalog, test_ca: Any,
                                            ca_file: str) -> None:
    result = https("redirect", "/", run, make_catalog, test_ca, ca_file, portal="portal.test")
    http = result.observation.samples[0].phases["http"]
    assert http.status == 302 and http.location_host == "portal.test"
    assert result.reason == "ok"  # the captive-portal verdict is the classifier's, from facts


def test_https_stall_after_16k(run: Any, make_catalog: MakeCatalog, test_ca: Any,
                               ca_file: str) -> None:
    result = https("stall", "/1mib", run, make_catalog, test_ca, ca_file)
    assert (result.status, result.reason) == ("blocked", "http.stall")
    http = result.observation.samples[0].phases["http"]
    assert http.failure == "stall" and http.bytes == 16 * 1024
    assert "16384 body bytes" in (http.error or "")


def test_https_throttled_transfer_is_ok_and_slow(run: Any, make_catalog: MakeCatalog,
                                                  test_ca: Any, ca_file: str) -> None:
    """128 kbit/s: slow but moving is not a timeout; read for the window, then stop with ok."""
    result = https("throttle", "/1mib", run, make_catalog, test_ca, ca_file, rate=128_000)
    assert result.reason in ("ok", "http.throttled"), result.detail
    http = result.observation.samples[0].phases["http"]
    assert http.ok and http.truncated
    assert 64_000 < http.throughput < 200_000
    assert 0 < http.bytes < 1 << 20


def test_https_throttled_below_timeout_per_record_is_not_a_stall(
    run: Any, make_catalog: MakeCatalog, test_ca: Any, ca_file: str,
) -> None:
    """Big records at a low rate: decrypted bytes come in bursts, raw bytes keep flowing."""
    result = https("throttle", "/1mib", run, make_catalog, test_ca, ca_file, rate=96_000,
                   chunk=16384)  # one 16 KiB record takes 1.4 s > the 0.5 s timeout
    http = result.observation.samples[0].phases["http"]
    assert http.ok, http.error
    assert http.truncated


def test_https_over_http2(run: Any, make_catalog: MakeCatalog, test_ca: Any, ca_file: str) -> None:
    result = https("ok", "/", run, make_catalog, test_ca, ca_file, http2=True)
    assert (result.status, result.reason) == ("ok", "ok"), result.detail
    phases = result.observation.samples[0].phases
    assert phases["tls"].alpn == "h2"
    assert phases["http"].http_version == "HTTP/2"
    assert phases["http"].status == 200 and phases["http"].bytes > 0
