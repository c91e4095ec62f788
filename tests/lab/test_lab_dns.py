"""Lab: the ISP resolver (in the censor's namespace) lies while the DoH cross-check tells the
truth: NXDOMAIN, a sinkhole, a forged or injected answer leading to an impostor; and a resolver
answering another address that does serve the name (a CDN), which is no censorship at all."""

from __future__ import annotations

import pytest
from netns import IMPOSTOR_IP, SERVER_EXTRA, SERVER_IP
from scenario import Lab, MakeLab, expect, expect_clean_baseline, server, target

pytestmark = pytest.mark.lab

# Documentation names (RFC 2606): "public" to the classifier, which treats a private answer for
# a private-suffix name (.test, .lan, ...) as expected; they never leave the lab's resolver.
SITE, CDN = "site.example.org", "cdn.example.org"
SITE_PORT, CDN_PORT = 8443, 8444  # fixed, so the impostor and the CDN node listen on them too
CDN_NODE = SERVER_EXTRA[2]
NAMED = ("name", "site", "cdn")


@pytest.fixture(scope="module")
def lab(make_lab: MakeLab) -> Lab:
    servers = [
        server("site", "tls", port=SITE_PORT, name=SITE),
        server("cdn", "tls", port=CDN_PORT, name=CDN),
        server("cdnnode", "tls", host=CDN_NODE, port=CDN_PORT, name=CDN),
        server("plain", "tcp"),
        # Where forged answers lead: an interceptor with a certificate from an unknown CA.
        *(server(f"impostor{port}", "tls", host=IMPOSTOR_IP, port=port, behaviour="untrusted",
                 name=name) for port, name in ((443, SITE), (SITE_PORT, SITE), (CDN_PORT, CDN))),
    ]
    truth = {SITE: [SERVER_IP], CDN: [SERVER_IP]}
    # The ISP resolver answers the CDN name with another node, as geo-DNS does; it lies, when
    # told to, with the impostor's address.
    resolver = {"records": {SITE: [SERVER_IP], CDN: [CDN_NODE]}, "lie": IMPOSTOR_IP}

    def targets(ports: dict[str, int]) -> list[dict[str, object]]:
        return [
            target("name", f"dns://{SITE}"),
            target("site", f"tls://{SITE}:{SITE_PORT}"),
            target("cdn", f"tls://{CDN}:{CDN_PORT}"),
            target("plain", f"tcp://{SERVER_IP}:{ports['plain']}"),
        ]

    return make_lab(servers, targets, records=truth, resolver=resolver)


def _all_named(reason: str, fallback: bool = False) -> dict[str, tuple[str, str]]:
    """Every named target blocked with `reason`; with `fallback` (every lookup failed, so the
    baseline's address was tried, and works), a target that is more than its name reads
    degraded: only the name is blocked."""
    return {name: ("degraded" if fallback and name != "name" else "blocked", reason)
            for name in NAMED}


def test_baseline_without_rules_is_clean(lab: Lab) -> None:
    expect_clean_baseline(lab)


def test_resolver_answer_differing_from_doh_with_valid_certificate_is_ok(lab: Lab) -> None:
    assert lab.baseline is not None
    cdn = lab.baseline.target("cdn")
    dns = cdn["phases"].get("dns", {})
    assert (cdn["status"], cdn["reason"]) == ("ok", "ok"), cdn["detail"]
    assert dns.get("answers") == [CDN_NODE], dns  # the resolver's own answer was used...
    assert SERVER_IP in (dns.get("crosscheck_answers") or []), dns  # ...though DoH said otherwise


def test_resolver_nxdomain_is_dns_nxdomain(lab: Lab) -> None:
    run = lab.run(behaviours={"resolver": "nxdomain"})
    expect(lab, run, _all_named("dns.nxdomain", fallback=True))
    assert "only the name is blocked" in run.target("site")["detail"]


def test_resolver_sinkhole_is_dns_bogon(lab: Lab) -> None:
    run = lab.run(behaviours={"resolver": "bogon"})  # 10.10.34.34: unrouted in the lab
    expect(lab, run, _all_named("dns.bogon"))


def test_resolver_forged_answer_to_impostor_is_dns_bogon(lab: Lab) -> None:
    # A documentation address is reserved, so the forged answer is a bogon, not a mismatch
    # (dns.mismatch needs a globally routable answer, which the lab never uses).
    run = lab.run(behaviours={"resolver": "lie"})
    expect(lab, run, _all_named("dns.bogon"))


def test_injected_answer_racing_the_genuine_one_is_dns_bogon(lab: Lab) -> None:
    run = lab.run(behaviours={"resolver": "inject"})
    expect(lab, run, _all_named("dns.bogon"))


def test_resolver_silent_is_dns_timeout(lab: Lab) -> None:
    run = lab.run(behaviours={"resolver": "silent"})
    expect(lab, run, _all_named("dns.timeout", fallback=True))
