"""Lab: censorship at TCP connect (IP blackhole, RST to the SYN, ICMP unreachable) seen by the
probe as the client, each rule sparing the other targets."""

from __future__ import annotations

import pytest
from netns import SERVER_EXTRA, SERVER_IP
from scenario import Lab, MakeLab, expect, expect_clean_baseline, server, target

pytestmark = pytest.mark.lab

BLACKHOLED = SERVER_EXTRA[0]
CONNECT_TARGETS = ("plain", "dropped", "reset", "prohibited", "hostunreach", "portunreach")


@pytest.fixture(scope="module")
def lab(make_lab: MakeLab) -> Lab:
    servers = [server(name, "tcp", host=BLACKHOLED if name == "dropped" else SERVER_IP)
               for name in CONNECT_TARGETS]
    servers.append(server("web", "tls", name="web.lab.test"))

    def targets(ports: dict[str, int]) -> list[dict[str, object]]:
        return [
            *(target(name, f"tcp://{BLACKHOLED if name == 'dropped' else SERVER_IP}:{ports[name]}")
              for name in CONNECT_TARGETS),
            target("web", f"tls://web.lab.test:{ports['web']}", address=SERVER_IP),
        ]

    return make_lab(servers, targets)


def _to(lab: Lab, name: str) -> str:
    return f"ip daddr {SERVER_IP} tcp dport {lab.ports[name]}"


def test_baseline_without_rules_is_clean(lab: Lab) -> None:
    expect_clean_baseline(lab)


def test_ip_blackhole_is_tcp_timeout(lab: Lab) -> None:
    run = lab.run(nft=[f"ip daddr {BLACKHOLED} drop"])
    expect(lab, run, {"dropped": ("blocked", "tcp.timeout")})


def test_rst_to_syn_is_tcp_reset(lab: Lab) -> None:
    run = lab.run(nft=[f"{_to(lab, 'reset')} reject with tcp reset"])
    expect(lab, run, {"reset": ("blocked", "tcp.reset")})


def test_icmp_admin_prohibited_is_tcp_unreachable(lab: Lab) -> None:
    run = lab.run(nft=[f"{_to(lab, 'prohibited')} reject with icmp type admin-prohibited"])
    expect(lab, run, {"prohibited": ("blocked", "tcp.unreachable")})


def test_icmp_host_unreachable_is_tcp_unreachable(lab: Lab) -> None:
    run = lab.run(nft=[f"{_to(lab, 'hostunreach')} reject with icmp type host-unreachable"])
    expect(lab, run, {"hostunreach": ("blocked", "tcp.unreachable")})


def test_rate_limited_icmp_reject_is_still_tcp_unreachable(lab: Lab) -> None:
    # A censor's rejects are often rate-limited (Linux sends a host 6 ICMP errors, then 1 a
    # second): here the first SYN is refused and the next two attempts see nothing.
    rule = _to(lab, "prohibited")
    run = lab.run(nft=[
        f"{rule} limit rate 1/minute burst 1 packets reject with icmp type admin-prohibited",
        f"{rule} drop",
    ])
    expect(lab, run, {"prohibited": ("blocked", "tcp.unreachable")})
    assert "(tcp.timeout x2)" in run.target("prohibited")["detail"]


def test_icmp_port_unreachable_to_syn_is_tcp_reset(lab: Lab) -> None:
    # Linux turns ICMP port-unreachable for a SYN into ECONNREFUSED, the same error as a RST
    # (RFC 1122 4.2.3.9), so from the client it is a refusal: tcp.reset.
    run = lab.run(nft=[f"{_to(lab, 'portunreach')} reject with icmp type port-unreachable"])
    expect(lab, run, {"portunreach": ("blocked", "tcp.reset")})
