"""Lab: UDP censorship of calls and QUIC: STUN recognised by its magic cookie on any port, lossy
UDP, ICMP refusal, and QUIC Initials dropped by size while TCP to the same port passes."""

from __future__ import annotations

import pytest
from netns import SERVER_IP
from scenario import Lab, MakeLab, expect, expect_clean_baseline, server, target

pytestmark = pytest.mark.lab

VIDEO = "video.lab.test"
# 40 % loss over 40 requests: <= 10 % lost has p ~ 1e-4, and a silent tail long enough to pass
# for a cut-off (12 requests, 30 % of the exchange) p ~ 2e-5. At 20 requests and 50 % loss the
# tail alone happens 1.6 % of the time: too flaky.
LOSS_REQUESTS, LOSS_PERCENT = 40, 40


@pytest.fixture(scope="module")
def lab(make_lab: MakeLab) -> Lab:
    servers = [
        server("stun", "stun", port=3478),
        server("stunhigh", "stun"),
        server("stunloss", "stun"),
        server("stunrefused", "stun"),
        server("quic", "quic", port=443, name=VIDEO),
        server("tls443", "tls", port=443, name=VIDEO),
    ]

    def targets(ports: dict[str, int]) -> list[dict[str, object]]:
        return [
            target("stun", f"stun://{SERVER_IP}:3478", feature="calls"),
            target("stunhigh", f"stun://{SERVER_IP}:{ports['stunhigh']}", feature="calls"),
            target("stunloss", f"stun://{SERVER_IP}:{ports['stunloss']}", feature="voice",
                   attempts=LOSS_REQUESTS, expect={"max_loss": "10%"}),
            target("stunrefused", f"stun://{SERVER_IP}:{ports['stunrefused']}", feature="relay"),
            target("quic", f"quic://{VIDEO}:443", feature="web", address=SERVER_IP),
            target("tls443", f"tls://{VIDEO}:443", feature="web", address=SERVER_IP),
        ]

    return make_lab(servers, targets)


def test_baseline_without_rules_is_clean(lab: Lab) -> None:
    expect_clean_baseline(lab)


def test_stun_magic_cookie_dropped_on_any_port_is_udp_timeout(lab: Lab) -> None:
    # RFC 8489 section 5: the cookie 0x2112A442 sits at bytes 4..7 of every STUN message, so a
    # DPI box finds STUN on any port: UDP header (64 bits) + 32 bits = bit offset 96.
    run = lab.run(nft=["meta l4proto udp @th,96,32 0x2112a442 drop"])
    timeout = ("blocked", "udp.timeout")
    expect(lab, run, {"stun": timeout, "stunhigh": timeout, "stunloss": timeout,
                      "stunrefused": timeout})


def test_random_udp_loss_is_udp_loss(lab: Lab) -> None:
    to_server = f"ip daddr {SERVER_IP} udp dport {lab.ports['stunloss']}"
    run = lab.run(nft=[f"{to_server} numgen random mod 100 < {LOSS_PERCENT} drop"])
    expect(lab, run, {"stunloss": ("degraded", "udp.loss")})


def test_icmp_port_unreachable_to_stun_is_udp_unreachable(lab: Lab) -> None:
    # Not a CONTRACT §4 code yet; classify.py names an ICMP refusal of UDP `udp.unreachable`.
    rule = f"ip daddr {SERVER_IP} udp dport {lab.ports['stunrefused']}"
    run = lab.run(nft=[f"{rule} reject with icmp type port-unreachable"])
    expect(lab, run, {"stunrefused": ("blocked", "udp.unreachable")})


def test_quic_initials_dropped_by_size_tcp_passes_is_quic_timeout(lab: Lab) -> None:
    # Russia 2022: UDP/443 datagrams big enough to be a QUIC Initial (>= 1001 bytes of payload,
    # 1029 bytes of IP packet) are dropped; small UDP and TCP/443 pass, so TLS still works.
    run = lab.run(nft=["udp dport 443 ip length >= 1029 drop"])
    expect(lab, run, {"quic": ("blocked", "quic.timeout")})
