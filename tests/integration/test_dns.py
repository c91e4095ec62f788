"""The dns layer against mock resolvers and a mock DoH server on loopback, judged end to end.

Every address the probe may connect to is in 127.0.0.0/8: lies answer 127.0.0.66 (nothing
listens there), so the certificate check never leaves the host. No test asks the host's resolver.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from probe import catalog
from probe.layers import Context
from probe.layers import dns as dns_layer
from probe.mock.certs import TestCA
from probe.mock.dns import DnsServer, DohServer
from probe.mock.tls import TLSServer
from probe.results import TargetResult
from probe.runner import Runner

NAME = "web.whatsapp.com"
GENUINE = "127.0.0.5"
LIE = "127.0.0.66"


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
def ca_file(ca: TestCA, tmp_path: Path) -> Path:
    return ca.write_ca(tmp_path / "ca.pem")


def catalog_text(targets: list[str], resolver: str, doh: str | None, ca_file: Path,
                 timeout: str = "1s", attempts: int = 1) -> str:
    lines = [
        "version: 1",
        "settings:",
        f"  resolver: '{resolver}'",
        f"  ca_file: '{ca_file}'",
        f"  timeout: {timeout}",
        f"  attempts: {attempts}",
    ]
    if doh:
        lines.append(f"  doh: '{doh}'")
    lines += ["platforms:", "  wa:", "    features:", "      f:"]
    lines += [f"        - '{t}'" for t in targets]
    return "\n".join(lines) + "\n"


async def judged(targets: list[str], resolver: DnsServer, doh: DohServer | None, ca_file: Path,
                 **settings: Any) -> list[TargetResult]:
    text = catalog_text(targets, f"127.0.0.1:{resolver.port}", doh.url if doh else None,
                        ca_file, **settings)
    runner = Runner(loaded=catalog.loads(text))
    await runner.run()
    return runner.finish().targets


async def one(behaviour: str, ca: TestCA, ca_file: Path, *, doh: bool = True,
              doh_behaviour: str = "ok", target: str = f"dns://{NAME}", **settings: Any
              ) -> TargetResult:
    records = {NAME: [GENUINE]}
    async with DnsServer(behaviour, records=records, lie=LIE) as resolver, \
            DohServer(doh_behaviour, ca=ca, records=records) as doh_server:
        results = await judged([target], resolver, doh_server if doh else None, ca_file,
                               **settings)
    return results[0]


def dns_facts(result: TargetResult) -> dict[str, Any]:
    phase = result.observation.samples[0].phases["dns"]
    return phase.model_dump(exclude_none=True)


def test_truthful_resolver_is_ok(ca: TestCA, ca_file: Path) -> None:
    result = asyncio.run(one("ok", ca, ca_file))
    assert (result.status, result.reason) == ("ok", "ok")
    facts = dns_facts(result)
    assert facts["answers"] == [GENUINE] and facts["rcode"] == "NOERROR"
    assert facts["crosscheck_answers"] == [GENUINE] and facts["ttl"] == 60
    assert facts["resolver"] == "configured" and facts["transport"] == "udp"
    assert "cert_valid_for_name" not in facts and "injected" not in facts


def test_nxdomain_while_doh_resolves(ca: TestCA, ca_file: Path) -> None:
    result = asyncio.run(one("nxdomain", ca, ca_file))
    assert (result.status, result.reason) == ("blocked", "dns.nxdomain")
    assert "DoH cross-check resolves it to 127.0.0.5" in result.detail
    assert dns_facts(result)["failure"] == "nxdomain"


def test_nxdomain_for_everyone_is_target_down(ca: TestCA, ca_file: Path) -> None:
    result = asyncio.run(one("nxdomain", ca, ca_file, doh_behaviour="nxdomain"))
    assert (result.status, result.reason) == ("inconclusive", "target.down")


def test_lie_is_bogon_after_a_failed_certificate_check(ca: TestCA, ca_file: Path) -> None:
    result = asyncio.run(one("lie", ca, ca_file))
    assert (result.status, result.reason) == ("blocked", "dns.bogon")
    facts = dns_facts(result)
    assert facts["answers"] == [LIE] and facts["crosscheck_answers"] == [GENUINE]
    assert facts["cert_valid_for_name"] is False and facts["cert_address"] == LIE
    assert facts["cert_failure"] == "connection_refused"


def test_injection_recorded_and_blocked(ca: TestCA, ca_file: Path) -> None:
    result = asyncio.run(one("inject", ca, ca_file))
    assert (result.status, result.reason) == ("blocked", "dns.bogon")
    facts = dns_facts(result)
    assert facts["injected"] is True
    assert facts["first_answers"] == [LIE] and facts["later_answers"] == [GENUINE]
    assert facts["answers"] == [LIE]  # what an application would have connected to
    assert "injection" in result.detail


def test_injection_seen_without_a_cross_check(ca: TestCA, ca_file: Path) -> None:
    result = asyncio.run(one("inject", ca, ca_file, doh=False))
    assert (result.status, result.reason) == ("blocked", "dns.bogon")
    assert "later reply 127.0.0.5" in result.detail


@pytest.mark.parametrize(("behaviour", "reason"), [
    ("silent", "dns.timeout"), ("servfail", "dns.servfail"), ("refused", "dns.refused"),
])
def test_resolver_that_does_not_answer(behaviour: str, reason: str, ca: TestCA,
                                       ca_file: Path) -> None:
    result = asyncio.run(one(behaviour, ca, ca_file, timeout="300ms"))
    assert (result.status, result.reason) == ("blocked", reason)
    assert dns_facts(result)["crosscheck_answers"] == [GENUINE]


def test_closed_resolver_port_is_refused(ca_file: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text = catalog_text([f"dns://{NAME}"], f"127.0.0.1:{port}", None, ca_file)

    async def main() -> TargetResult:
        runner = Runner(loaded=catalog.loads(text))
        await runner.run()
        return runner.finish().targets[0]

    result = asyncio.run(main())
    assert (result.status, result.reason) == ("blocked", "dns.refused")
    assert dns_facts(result)["failure"] == "port_unreachable"


def test_truncation_falls_back_to_tcp(ca: TestCA, ca_file: Path) -> None:
    result = asyncio.run(one("truncate", ca, ca_file))
    assert (result.status, result.reason) == ("ok", "ok")
    facts = dns_facts(result)
    assert facts["transport"] == "tcp" and facts["truncated"] is True
    assert facts["answers"] == [GENUINE]


def test_cdn_answer_with_a_valid_certificate_is_ok(ca: TestCA, ca_file: Path) -> None:
    """The resolver's address differs from the cross-check's but serves a valid certificate."""

    async def main() -> TargetResult:
        async with TLSServer(host="127.0.0.7", ca=ca, name=NAME) as tls, \
                DnsServer(records={NAME: ["127.0.0.7"]}) as resolver, \
                DohServer(ca=ca, records={NAME: ["127.0.0.8"]}) as doh:
            results = await judged([f"tls://{NAME}:{tls.port}"], resolver, doh, ca_file)
        return results[0]

    result = asyncio.run(main())
    assert (result.status, result.reason) == ("ok", "ok"), result.detail
    facts = dns_facts(result)
    assert facts["cert_valid_for_name"] is True and facts["cert_address"] == "127.0.0.7"
    assert facts["crosscheck_answers"] == ["127.0.0.8"]


def test_different_answer_with_an_untrusted_certificate_is_bogon(ca: TestCA,
                                                                  ca_file: Path) -> None:
    async def main() -> TargetResult:
        async with TLSServer("untrusted", host="127.0.0.7", ca=ca, name=NAME) as tls, \
                DnsServer(records={NAME: ["127.0.0.7"]}) as resolver, \
                DohServer(ca=ca, records={NAME: ["127.0.0.8"]}) as doh:
            results = await judged([f"tls://{NAME}:{tls.port}"], resolver, doh, ca_file)
        return results[0]

    result = asyncio.run(main())
    assert (result.status, result.reason) == ("blocked", "dns.bogon")
    assert dns_facts(result)["cert_failure"] == "untrusted_certificate"


def test_cdn_answer_for_a_dns_target_checks_port_443(ca: TestCA, ca_file: Path) -> None:
    async def main() -> TargetResult:
        tls = TLSServer(host="127.0.34.7", port=443, ca=ca, name=NAME)
        try:
            await tls.start()
        except OSError as exc:  # not root, or 443 taken on that address
            pytest.skip(f"cannot listen on 127.0.34.7:443: {exc}")
        try:
            async with DnsServer(records={NAME: ["127.0.34.7"]}) as resolver, \
                    DohServer(ca=ca, records={NAME: ["127.0.34.8"]}) as doh:
                return (await judged([f"dns://{NAME}"], resolver, doh, ca_file))[0]
        finally:
            await tls.stop()

    result = asyncio.run(main())
    assert (result.status, result.reason) == ("ok", "ok"), result.detail
    assert dns_facts(result)["cert_valid_for_name"] is True


def _without_times(facts: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in facts.items() if not k.endswith("ms") and k != "ms"}


def test_every_scheme_shares_the_dns_implementation(ca: TestCA, ca_file: Path) -> None:
    """dns://, and the dns phase of tcp:// and tls:// targets, record the same facts."""
    schemes = ["tcp", "tls", "quic"]

    async def main() -> tuple[list[TargetResult], list[TargetResult]]:
        async with TLSServer(host=GENUINE, ca=ca, name=NAME) as tls:
            targets = [f"dns://{NAME}"] + [f"{s}://{NAME}:{tls.port}" for s in schemes]
            records = {NAME: [GENUINE]}
            async with DnsServer(records=records) as resolver, \
                    DohServer(ca=ca, records=records) as doh:
                honest = await judged(targets, resolver, doh, ca_file)
                resolver.behaviour = "lie"
                lying = await judged(targets[:1] + [f"tcp://{NAME}:{tls.port}"], resolver, doh,
                                     ca_file)
        return honest, lying

    honest, lying = asyncio.run(main())
    first = _without_times(dns_facts(honest[0]))
    for result in honest:
        assert _without_times(dns_facts(result)) == first, result.url
        if not result.url.startswith("quic"):  # no QUIC server here: only dns must pass
            assert result.reason == "ok", (result.url, result.detail)
        assert not result.reason.startswith("dns."), (result.url, result.detail)
    # A lie is judged alike whatever the scheme: same facts, same verdict.
    assert _without_times(dns_facts(lying[0])) == _without_times(dns_facts(lying[1]))
    assert [r.reason for r in lying] == ["dns.bogon", "dns.bogon"]


def test_failed_cross_check_leaves_a_private_answer_suspect(ca: TestCA, ca_file: Path) -> None:
    """An untrusted DoH server is no reference: a loopback answer for a public name with no
    valid certificate behind it is then a bogon, and the detail says it was not cross-checked."""
    result = asyncio.run(one("ok", ca, ca_file, doh_behaviour="untrusted"))
    facts = dns_facts(result)
    assert facts["crosscheck_failure"] == "untrusted_certificate"
    assert (result.status, result.reason) == ("blocked", "dns.bogon")
    assert "not cross-checked" in result.detail


def test_silent_doh_server_costs_one_timeout(ca: TestCA, ca_file: Path) -> None:
    async def main() -> tuple[TargetResult, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        result = await one("ok", ca, ca_file, doh_behaviour="silent", timeout="300ms")
        return result, loop.time() - start

    result, took = asyncio.run(main())
    assert dns_facts(result)["crosscheck_failure"] == "timeout"
    assert took < 5.0  # one timeout of 0.3 s, plus the certificate check's: well under


def test_garbage_replies_are_not_answers(ca_file: Path) -> None:
    class Garbage(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.transport.sendto(data[:2] + b"\x81\x80garbage", addr)  # type: ignore[attr-defined]

    async def main() -> TargetResult:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(Garbage, local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        try:
            text = catalog_text([f"dns://{NAME}"], f"127.0.0.1:{port}", None, ca_file,
                                timeout="300ms")
            runner = Runner(loaded=catalog.loads(text))
            await runner.run()
            return runner.finish().targets[0]
        finally:
            transport.close()

    result = asyncio.run(main())
    # an answer, but not DNS: not "did not answer" (dns.timeout)
    assert (result.status, result.reason) == ("blocked", "dns.servfail")
    assert "none a DNS reply" in dns_facts(result)["error"]


def test_system_resolver_is_read_from_resolv_conf(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`resolver: system` asks the first nameserver of resolv.conf (here a mock on port 53),
    and records only that it was the system's."""
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.53.53\nnameserver 127.0.53.54\n")
    monkeypatch.setattr(dns_layer, "RESOLV_CONF", str(conf))

    async def main() -> dict[str, Any]:
        server = DnsServer(host="127.0.53.53", port=53, records={"chat.example": ["127.0.0.5"]})
        try:
            await server.start()
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EADDRINUSE):
                raise
            pytest.skip(f"cannot listen on 127.0.53.53:53: {exc}")
        try:
            loaded = catalog.loads("version: 1\nsettings: {timeout: 1s}\nplatforms:\n"
                                   "  p:\n    features:\n      f: [dns://chat.example]\n")
            job = next(loaded.jobs())
            ctx = Context(settings=loaded.settings)
            try:
                sample = await dns_layer.measure(job, ctx)
            finally:
                await ctx.aclose()
            return sample.phases["dns"].model_dump(exclude_none=True)
        finally:
            await server.stop()

    facts = asyncio.run(main())
    assert facts["resolver"] == "system" and "resolver_address" not in facts
    assert facts["answers"] == ["127.0.0.5"]
    assert "127.0.53.53" not in str(facts)


def test_resolver_of_without_nameserver_lines(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("search lan\n")
    monkeypatch.setattr(dns_layer, "RESOLV_CONF", str(conf))
    settings = catalog.Settings.model_validate({})
    assert dns_layer.resolver_of(settings) == ("system", "127.0.0.1", 53)
    monkeypatch.setattr(dns_layer, "RESOLV_CONF", str(tmp_path / "missing"))
    assert dns_layer.resolver_of(settings) == ("system", "127.0.0.1", 53)
    configured = catalog.Settings.model_validate({"resolver": "[::1]:5353"})
    assert dns_layer.resolver_of(configured) == ("configured", "::1", 5353)


def test_mock_bogon_answers_the_sinkhole(ca: TestCA) -> None:
    """The mock's `bogon` behaviour, read with the layer's own query (nothing connects to it)."""
    async def main() -> dns_layer.Lookup:
        async with DnsServer("bogon") as resolver:
            return await dns_layer.query("127.0.0.1", resolver.port, NAME, "A", 1.0)

    lookup = asyncio.run(main())
    assert lookup.reply is not None and lookup.reply.addresses == ("10.10.34.34",)


def test_doh_server_answers_get_and_post(ca: TestCA, ca_file: Path) -> None:
    import base64

    import dns.message

    async def main() -> list[dns_layer.Reply | None]:
        async with DohServer(ca=ca, records={NAME: [GENUINE, "::1"]}) as doh:
            query = dns.message.make_query(NAME, "AAAA")
            query.id = 0
            encoded = base64.urlsafe_b64encode(query.to_wire()).rstrip(b"=").decode()
            trust = ssl.create_default_context(cafile=str(ca_file))
            async with httpx.AsyncClient(verify=trust, trust_env=False) as client:
                got = await client.get(doh.url, params={"dns": encoded})
                bad = await client.post(doh.url, content=b"\x00garbage")
                posted = await dns_layer.doh_query(client, doh.url, NAME, "A", 1.0)
            assert bad.status_code == 400
            return [dns_layer.parse_reply(got.content, query), posted]

    via_get, via_post = asyncio.run(main())
    assert via_get is not None and via_get.addresses == ("::1",)
    assert via_post is not None and via_post.addresses == (GENUINE,)


def test_unknown_behaviour_is_refused() -> None:
    with pytest.raises(ValueError):
        DnsServer("weird")
    with pytest.raises(ValueError):
        DohServer("weird")
    with pytest.raises(ValueError):
        DnsServer(unknown_option=1)
