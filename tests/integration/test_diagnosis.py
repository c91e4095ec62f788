"""The diagnosis steps taken after every sample failed: other addresses, the presented certificate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from probe import engine
from probe.layers import Context
from probe.mock.certs import TestCA
from probe.mock.dns import DnsServer
from probe.mock.tcp import TCPServer
from probe.mock.tls import TLSServer


def test_untrusted_certificate_names_its_issuer(run: Any, make_catalog: Callable[..., Any],
                                                test_ca: TestCA, ca_file: str) -> None:
    async def scenario() -> Any:
        server = TLSServer("untrusted", ca=test_ca, name="chat.test")
        await server.start()
        try:
            loaded = make_catalog({"url": f"tls://chat.test:{server.port}",
                                   "address": "127.0.0.1"}, timeout="1s", attempts=1,
                                  ca_file=ca_file)
            return await measure_first(loaded)
        finally:
            await server.stop()

    observation = run(scenario())
    assert observation.samples[0].failed[1].failure == "untrusted_certificate"
    certificate = observation.diagnosis["certificate"]
    assert certificate.ok
    assert "interceptor" in certificate.issuer  # the mock's untrusted CA says so
    assert "sni_control" not in observation.diagnosis  # no SNI swap after a certificate error


def test_connect_timeout_tries_the_names_other_addresses(run: Any,
                                                         make_catalog: Callable[..., Any]) -> None:
    async def scenario() -> Any:
        silent = TCPServer("silent", host="127.0.0.2")
        await silent.start()
        working = TCPServer("ok", host="127.0.0.3", port=silent.port)
        await working.start()
        dns = DnsServer("ok", records={"chat.test": ["127.0.0.2", "127.0.0.3"]})
        await dns.start()
        try:
            loaded = make_catalog(f"tcp://chat.test:{silent.port}", timeout="0.5s", attempts=1,
                                  resolver=f"127.0.0.1:{dns.port}")
            # The answers come in random order (dnspython shuffles an RRset on the wire):
            # measure until a sample drew the silent one first. Four tries missed it one time
            # in 16; sixteen miss it one time in 65,536, and an early hit ends the loop.
            for _ in range(16):
                observation = await measure_first(loaded)
                if not observation.samples[0].ok:
                    return observation
            return observation
        finally:
            for server in (dns, working, silent):
                await server.stop()

    observation = run(scenario())
    failed = observation.samples[0].failed
    assert failed is not None and failed[0] == "tcp" and failed[1].failure == "timeout"
    step = observation.diagnosis["other_addresses"]
    assert step.ok and step.connected == ["127.0.0.3"]


async def measure_first(loaded: Any) -> Any:
    """The observation of the catalog's first target, measured as the engine would."""
    job = next(loaded.jobs())
    ctx = Context(settings=loaded.settings)
    try:
        return await engine.measure(job, ctx)
    finally:
        await ctx.aclose()
