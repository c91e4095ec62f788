"""Lab: `probe reflect` in the server namespace, and each calls technique of issue 16 named by
the reflector's differential (issue 20): STUN classified on any port, a call port blocked, flows
frozen after 25 packets, the platform's own address targeted, the reflector itself unreachable;
and the platform's TLS name sent to the reflector: filtered wherever it goes, or only on the
platform's addresses. The volunteer's report says each diagnosis was measured against it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from netns import SERVER_EXTRA, SERVER_IP
from scenario import CONTROL_IP, Lab, MakeLab, control, expect_clean_baseline, server, target

pytestmark = pytest.mark.lab

REFLECTOR = SERVER_EXTRA[0]  # an address nobody else uses: the research team's reflector
CALL_PORT, CONTROL_PORT, TLS_PORT = 3478, 40000, 443
NAME = "chat.lab.test"
MEASURED = f"measured against the reflector at {REFLECTOR}"


@pytest.fixture(scope="module")
def lab(make_lab: MakeLab) -> Iterator[Lab]:
    servers = [
        server("voice", "stun", port=CALL_PORT),  # the platform's call server, on the call port
        server("reflector", "reflect", host=REFLECTOR, udp_ports=[CALL_PORT, CONTROL_PORT],
               tcp_ports=[TLS_PORT]),
        server("chat", "tls", name=NAME),  # the platform's chat server, by name
        server("stunctl", "stun", host=CONTROL_IP),
    ]

    def targets(ports: dict[str, int]) -> list[dict[str, Any]]:
        return [target("voice", f"stun://{SERVER_IP}:{CALL_PORT}", feature="calls",
                       call={"duration": "1.5s"}),
                target("chat", f"tls://{NAME}:{ports['chat']}", address=SERVER_IP,
                       feature="messaging"),
                control("stunctl", f"stun://{CONTROL_IP}:{ports['stunctl']}")]

    made = make_lab(servers, targets, reflector={
        "address": REFLECTOR, "udp_ports": [CALL_PORT], "control_port": CONTROL_PORT,
        "duration": "1.5s", "shapes": ["stun", "random"], "tls_port": TLS_PORT})
    try:
        yield made
    finally:
        made.censor.clear()


def _voice(lab: Lab, nft: list[str]) -> dict[str, Any]:
    run = lab.run(nft=nft)
    flows = [f for f in run.result["reflector"] if "transport=tls" not in f["url"]]
    assert len(flows) == 4, run.result["reflector"]  # 2 shapes x 2 ports
    return dict(run.target("voice"))


def _has(t: dict[str, Any], *words: str) -> None:
    missing = [w for w in words if w not in t["detail"]]
    assert not missing, f"{missing} not in: {t['detail']}"


def test_baseline_every_reflector_flow_is_ok(lab: Lab) -> None:
    expect_clean_baseline(lab)
    assert lab.baseline is not None
    flows = lab.baseline.result["reflector"]
    assert [(f["status"], f["reason"]) for f in flows] == [("ok", "ok")] * 5, flows
    assert flows[-1]["name"] == f"reflector tls {NAME}", flows


def test_stun_classified_is_measured(lab: Lab) -> None:
    # the STUN magic cookie at bytes 4..7 of the UDP payload, whatever the address and port
    voice = _voice(lab, ["meta l4proto udp @th,96,32 0x2112a442 drop"])
    assert (voice["status"], voice["reason"]) == ("blocked", "udp.stun_filtered"), voice
    _has(voice, MEASURED, "STUN-shaped datagrams to port 3478 are dropped while random")


def test_a_blocked_call_port_is_measured(lab: Lab) -> None:
    voice = _voice(lab, [f"udp dport {CALL_PORT} drop"])
    assert (voice["status"], voice["reason"]) == ("blocked", "udp.timeout"), voice
    _has(voice, MEASURED, "every datagram to UDP port 3478 is dropped", "the port is blocked")


def test_flows_frozen_after_25_packets_are_measured(lab: Lab) -> None:
    voice = _voice(lab, [f"udp dport {CALL_PORT} ct packets > 25 drop",
                         f"udp sport {CALL_PORT} ct packets > 25 drop"])
    assert (voice["status"], voice["reason"]) == ("blocked", "udp.cutoff"), voice
    _has(voice, MEASURED, "flows to port 3478 are frozen after")


def test_the_platforms_address_targeted_is_measured(lab: Lab) -> None:
    voice = _voice(lab, [f"ip daddr {SERVER_IP} meta l4proto udp drop"])
    assert (voice["status"], voice["reason"]) == ("blocked", "udp.timeout"), voice
    _has(voice, MEASURED, "the platform's servers are targeted")


def test_an_unreachable_reflector_says_pick_another(lab: Lab) -> None:
    voice = _voice(lab, [f"ip daddr {REFLECTOR} drop",
                         f"ip daddr {SERVER_IP} meta l4proto udp drop"])
    _has(voice, MEASURED, "pick another reflector")


def test_a_name_filtered_everywhere_is_cut_at_the_reflector_too(lab: Lab) -> None:
    # DPI on the ClientHello wherever it goes (iptables' string match, as in test_lab_sni.py)
    run = lab.run(iptables=[["-p", "tcp", "-m", "string", "--algo", "bm", "--string", NAME,
                             "-j", "DROP"]])
    chat = run.target("chat")
    assert (chat["status"], chat["reason"]) == ("blocked", "tls.sni_filtered"), chat
    _has(chat, MEASURED, f"a handshake naming {NAME} is cut there too")


def test_a_block_on_the_platforms_addresses_lets_the_name_pass_elsewhere(lab: Lab) -> None:
    run = lab.run(nft=[f"ip daddr {SERVER_IP} tcp dport {lab.ports['chat']} drop"])
    chat = run.target("chat")
    assert chat["status"] == "blocked", chat
    _has(chat, MEASURED, f"a handshake and 128 KiB each way naming {NAME} passes there",
         "the block is tied to the platform's addresses")


def test_a_transfer_frozen_after_16_kb_is_measured_with_its_direction(lab: Lab) -> None:
    # as the 2025 freezes do to a matched connection: ~16 KB down, then nothing (here every
    # connection to the reflector's TLS port: the probe must measure the count and direction)
    freeze = f"tcp sport {TLS_PORT} ip saddr {REFLECTOR} ct reply bytes > 16000 drop"
    run = lab.run(nft=[freeze])
    [handshake] = [f for f in run.result["reflector"] if f["name"] == f"reflector tls {NAME}"]
    assert (handshake["status"], handshake["reason"]) == ("blocked", "http.stall"), handshake
    moved = handshake["observation"]["samples"][0]["phases"]["transfer"]
    assert moved["direction"] == "down" and 8_000 < moved["down"] < 20_000, moved
    assert "the transfer froze down" in handshake["detail"]
