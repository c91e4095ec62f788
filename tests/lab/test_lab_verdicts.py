"""Lab: verdicts II (issue 17): a residual penalty box after a forbidden SNI, a captive portal
that answers every name, and QUIC filtered by its decrypted SNI told from QUIC v1 dropped
wholesale and from UDP/443 dropped; each with real netfilter rules (the start-of-run outage has
a module of its own, test_lab_outage.py: it needs timeouts longer than the outage)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from netns import CLIENT_IP, SERVER_EXTRA, SERVER_IP, nft_chain
from scenario import (
    CONTROL_IP,
    Lab,
    MakeLab,
    control,
    expect,
    expect_clean_baseline,
    server,
    target,
)

pytestmark = pytest.mark.lab

FORBIDDEN, FREE = "forbidden.lab.test", "free.lab.test"
BOX_PORT, FREE_PORT = 8443, 8444  # one server, two ports: the box holds the first only
BOX_MARK = "0x5b0c"  # iptables' string match marks the ClientHello; nft boxes what is marked
SITE = "site.lab.test"
CONTROLS = ("ctl1.lab.test", "ctl2.lab.test")  # named HTTPS controls, as the shipped catalog has
PORTAL = SERVER_EXTRA[2]
QUIC_FILTERED, QUIC_OPEN = "video.lab.test", "open.lab.test"
QUIC_DROPPED_AT, QUIC_V1_DROPPED_AT = SERVER_EXTRA[0], SERVER_EXTRA[2]
QUIC_NAMES = ("quicfiltered", "quicopen", "quicdropped", "quicv1")


@pytest.fixture(scope="module")
def lab(make_lab: MakeLab) -> Iterator[Lab]:
    servers = [
        server("box", "tls", port=BOX_PORT, name=FORBIDDEN),
        server("free", "tls", port=FREE_PORT, name=FREE),
        server("site", "https", port=443, name=SITE),
        server("ctl1", "https", host=CONTROL_IP, port=443, name=CONTROLS[0]),
        server("ctl2", "https", host=SERVER_EXTRA[0], port=443, name=CONTROLS[1]),
        # The portal: its own certificate for whatever name a browser asked, and plain HTTP.
        server("portal", "https", host=PORTAL, port=443, name="portal.lab.test"),
        server("portalhttp", "tcp", host=PORTAL, port=80),
        # QUIC: one address filtered by name, one where UDP/443 is dropped, one where every
        # QUIC v1 long-header packet is.
        server("quicfiltered", "quic", port=443, name=QUIC_FILTERED),
        server("quicopen", "quic", port=8443, name=QUIC_OPEN),
        server("quicdropped", "quic", host=QUIC_DROPPED_AT, port=443, name=QUIC_FILTERED),
        server("quicv1", "quic", host=QUIC_V1_DROPPED_AT, port=443, name=QUIC_FILTERED),
    ]
    records = {SITE: [SERVER_IP], CONTROLS[0]: [CONTROL_IP], CONTROLS[1]: [SERVER_EXTRA[0]]}

    def targets(ports: dict[str, int]) -> list[dict[str, Any]]:
        return [
            target("box", f"tls://{FORBIDDEN}:{BOX_PORT}", feature="chat", address=SERVER_IP),
            target("free", f"tls://{FREE}:{FREE_PORT}", feature="chat", address=SERVER_IP),
            target("site", f"https://{SITE}/", feature="web"),
            target("name", f"dns://{SITE}", feature="web"),
            target("port", f"tcp://{SERVER_IP}:443", feature="web"),
            target("quicfiltered", f"quic://{QUIC_FILTERED}:443", feature="video",
                   address=SERVER_IP),
            target("quicopen", f"quic://{QUIC_OPEN}:8443", feature="video", address=SERVER_IP),
            target("quicdropped", f"quic://{QUIC_FILTERED}:443", feature="video",
                   address=QUIC_DROPPED_AT),
            target("quicv1", f"quic://{QUIC_FILTERED}:443", feature="video",
                   address=QUIC_V1_DROPPED_AT),
            *(control(name, f"https://{name}/") for name in CONTROLS),
        ]

    made = make_lab(servers, targets, records=records, resolver={"lie": PORTAL})
    try:
        yield made
    finally:
        made.censor.clear()  # a test that failed before its run must not leave a helper behind


def _has(t: dict[str, Any], *words: str) -> None:
    missing = [w for w in words if w not in t["detail"]]
    assert not missing, (f"{t['name']}: {missing} not in the detail: {t['detail']}\n"
                         f"{t['phases']}\n{t['observation'].get('diagnosis')}")


def _failures(t: dict[str, Any]) -> list[str]:
    """Each sample's failing layer and failure, in the order taken."""
    out = []
    for sample in t["observation"]["samples"]:
        failed = [f"{layer}.{facts.get('failure')}" for layer, facts in sample["phases"].items()
                  if not facts.get("ok", True)]
        out.append(failed[0] if failed else "ok")
    return out


def test_baseline_without_rules_is_clean(lab: Lab) -> None:
    expect_clean_baseline(lab)


def test_residual_penalty_box_is_sni_filtered(lab: Lab) -> None:
    # A forbidden ClientHello is reset, and its (client, server, port) boxed for 120 s: every
    # packet of that 3-tuple dropped, both ways, whatever it carries. The server's other port
    # is free. nft cannot search a payload for a string, so iptables' string match marks the
    # ClientHello and an nft chain after it (filter + 10) boxes and resets what is marked.
    box = "ip saddr . ip daddr . tcp dport"
    penalty = "\n".join([
        "  set pbox {", "    type ipv4_addr . ipv4_addr . inet_service",
        "    flags dynamic, timeout; timeout 120s;", "  }",
        nft_chain("penalty", "forward", [
            f"{box} @pbox drop",
            "ip daddr . ip saddr . tcp sport @pbox drop",
            f"meta mark {BOX_MARK} add @pbox {{ {box} }} reject with tcp reset",
        ], priority="filter + 10"),
    ])
    run = lab.run(iptables=[["-p", "tcp", "-m", "string", "--algo", "bm", "--string", FORBIDDEN,
                             "-j", "MARK", "--set-mark", BOX_MARK]], extra=[penalty])
    expect(lab, run, {"box": ("blocked", "tls.sni_filtered")})
    boxed = run.target("box")
    # The scenario as the censor played it: cut at TLS, then silenced at connect.
    assert _failures(boxed) == ["tls.connection_reset", "tcp.timeout", "tcp.timeout"], boxed["phases"]
    _has(boxed, "residual")


def test_captive_portal_makes_every_target_inconclusive(lab: Lab) -> None:
    # The resolver answers every name with the portal; HTTP and HTTPS are DNATed to it whatever
    # the address; nothing else leaves the network before the user logs in.
    portal = nft_chain("portal", "prerouting", [
        f"ip saddr {CLIENT_IP} tcp dport {{ 80, 443 }} dnat ip to {PORTAL}",
    ], kind="nat", priority="dstnat")
    run = lab.run(nft=[f"ip saddr {CLIENT_IP} ip daddr {PORTAL} tcp dport {{ 80, 443 }} accept",
                       f"ip saddr {CLIENT_IP} drop"], extra=[portal],
                  behaviours={"resolver": "lie"})
    captive = ("inconclusive", "network.captive")
    assert lab.baseline is not None
    expect(lab, run, {t["name"]: captive for t in lab.baseline.result["targets"]},
           network=captive)
    # The TCP connect and the DNS answer worked (they reached the portal): still not judged.
    for name, layer in (("port", "tcp"), ("name", "dns")):
        phase = run.target(name)["phases"].get(layer, {})
        assert phase.get("ok"), (name, run.target(name)["phases"])
    assert run.target("name")["phases"]["dns"].get("answers") == [PORTAL]


def test_quic_filtered_by_sni_is_told_from_quic_dropped(lab: Lab) -> None:
    # Three censors side by side: the NFQUEUE helper decrypts Initials to SERVER_IP and drops
    # the ones naming QUIC_FILTERED (the control's harmless name and QUIC_OPEN pass); UDP/443
    # to one address is dropped whole; to another every QUIC v1 long-header packet is (the
    # version field, bits 8..39 of the UDP payload: offset 64 + 8 = 72), so a reserved version
    # still gets its version negotiation back.
    helper = lab.censor.queue(f"ip daddr {SERVER_IP} udp dport {{ 443, 8443 }}", "quic-sni",
                              lab.folder, block=[QUIC_FILTERED])
    run = lab.run(nft=[f"ip daddr {QUIC_DROPPED_AT} udp dport 443 drop",
                       f"ip daddr {QUIC_V1_DROPPED_AT} udp dport 443 @th,72,32 1 drop"])
    stats = helper.stats()
    timeout = ("blocked", "quic.timeout")
    expect(lab, run, {"quicfiltered": ("blocked", "quic.sni_filtered"),
                      "quicopen": ("ok", "ok"), "quicdropped": timeout, "quicv1": timeout})
    _has(run.target("quicfiltered"), "QUIC control", "completed")
    _has(run.target("quicdropped"), "unanswered too")
    _has(run.target("quicv1"), "QUIC v1 is dropped")
    assert stats["dropped"] == stats["snis"].get(QUIC_FILTERED, 0) > 0, stats
