"""Lab: calls measured as calls (issue 16): STUN classified on any address and port, a flow
frozen after 25 packets by conntrack counters, a targeted UDP drop with TCP to the same address
allowed, a gurgling relay (NFQUEUE loss and jitter), a rate-limited STUN server, all UDP but the
ISP resolver's dropped, and no rules at all; each told apart by its reason and its words."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from netns import SERVER_EXTRA, SERVER_IP, ProbeRun
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

VOICE, QUIC = "voice.lab.test", "quic.lab.test"
TARGETED = SERVER_EXTRA[0]  # the address whose UDP is dropped while TCP to it passes
GURGLING = SERVER_EXTRA[2]
# A short call: 100 requests at 50/s cross a 25-packet freeze with most of the flow left to
# show the silence, and keep the whole run (all calls flows run at once) to a few seconds.
CALL = {"duration": "2s"}
# The rate-limit rule reads answers per second over at least three whole seconds: 4 s of flow.
BUSY_CALL = {"duration": "4s"}
BUSY_RATE = 5  # answers a second the rate-limited server gives each client
# Issue 16's gurgling relay: 15 % lost each way, the rest held 0-80 ms.
GURGLE_LOSS, GURGLE_JITTER_MS = 0.15, 80.0
FREEZE_PACKETS = 25  # the TSPU's freeze: a flow's 26th packet, counted both ways, is dropped
# Platform STUN/TURN targets: what a censor of calls acts on.
CALL_PATHS = ("voice", "video", "relay", "gurgle", "turn", "busy")


@pytest.fixture(scope="module")
def lab(make_lab: MakeLab) -> Iterator[Lab]:
    servers = [
        server("voice", "stun", port=3478),
        server("video", "stun"),
        server("turn", "turn"),
        server("busy", "stun", behaviour="ratelimit", rate=BUSY_RATE),
        server("relay", "stun", host=TARGETED),
        server("chat", "tcp", host=TARGETED),
        server("gurgle", "stun", host=GURGLING),
        # The generic controls: a STUN server and a QUIC server of nobody's platform.
        server("stunctl", "stun", host=CONTROL_IP),
        server("quicctl", "quic", host=CONTROL_IP, port=443, name=QUIC),
    ]
    records = {VOICE: [SERVER_IP], QUIC: [CONTROL_IP]}

    def targets(ports: dict[str, int]) -> list[dict[str, Any]]:
        return [
            # By name: the lab's resolver answers it over UDP, as an ISP resolver does.
            target("voice", f"stun://{VOICE}:3478", feature="calls", call=CALL),
            target("video", f"stun://{SERVER_IP}:{ports['video']}", feature="calls", call=CALL),
            target("turn", f"turn://{SERVER_IP}:{ports['turn']}", feature="calls", call=CALL),
            target("busy", f"stun://{SERVER_IP}:{ports['busy']}", feature="calls",
                   call=BUSY_CALL),
            target("relay", f"stun://{TARGETED}:{ports['relay']}", feature="calls", call=CALL),
            target("gurgle", f"stun://{GURGLING}:{ports['gurgle']}", feature="calls",
                   call=CALL),
            target("chat", f"tcp://{TARGETED}:{ports['chat']}", feature="chat"),
            control("stunctl", f"stun://{CONTROL_IP}:{ports['stunctl']}"),
            # Resolved through the lab's resolver: DNS over UDP answered, and QUIC answered.
            control("quicctl", f"quic://{QUIC}:443"),
        ]

    made = make_lab(servers, targets, records=records)
    try:
        yield made
    finally:
        made.censor.clear()  # a test that failed before its run must not leave a helper behind


@pytest.fixture(scope="module")
def unruled(lab: Lab) -> ProbeRun:
    """A run against the baseline with no rule at all (the benign case, and the rate-limited
    server's second run)."""
    return lab.run()


def _control(run: ProbeRun, name: str) -> dict[str, Any]:
    return dict(next(c for c in run.result["network"]["controls"] if c["name"] == name))


def _stun(t: dict[str, Any]) -> dict[str, Any]:
    return dict(t["phases"].get("stun") or {})


def _has(t: dict[str, Any], *words: str) -> None:
    missing = [w for w in words if w not in t["detail"]]
    assert not missing, f"{t['name']}: {missing} not in the detail: {t['detail']}\n{_stun(t)}"


def test_baseline_without_rules_is_clean(lab: Lab) -> None:
    expect_clean_baseline(lab)
    assert lab.baseline is not None
    for name in CALL_PATHS:  # every calls target was measured as a call
        assert _stun(lab.baseline.target(name)).get("call"), lab.baseline.target(name)


def test_each_calls_target_runs_one_call_flow(lab: Lab) -> None:
    # Issue 16: all calls targets run at once, so a run grows by about one call span, not one
    # per target; a target taking its `attempts` as one call flow each would grow it by three.
    assert lab.baseline is not None
    flows = {name: sum(1 for s in lab.baseline.target(name)["observation"]["samples"]
                       if (s["phases"].get("stun") or {}).get("call"))
             for name in CALL_PATHS}
    assert flows == dict.fromkeys(CALL_PATHS, 1), flows


def test_stun_cookie_dropped_everywhere_is_stun_filtered(lab: Lab) -> None:
    # RFC 8489 section 5: the cookie 0x2112A442 sits at bytes 4..7 of every STUN (and TURN)
    # message: UDP header (64 bits) + 32 bits = bit offset 96, whatever the address and port.
    run = lab.run(nft=["meta l4proto udp @th,96,32 0x2112a442 drop"])
    filtered = ("blocked", "udp.stun_filtered")
    expect(lab, run, dict.fromkeys(CALL_PATHS, filtered))
    # The generic STUN control is silent too, while QUIC and DNS over UDP are answered.
    assert (_control(run, "stunctl")["status"], _control(run, "quicctl")["status"]) == (
        "blocked", "ok"), run.result["network"]
    for name in CALL_PATHS:
        _has(run.target(name), "whatever the server", "classified")


def test_flow_frozen_after_25_packets_is_cutoff(lab: Lab) -> None:
    # The TSPU's freeze with the kernel's own counters: conntrack counts a flow's packets in
    # both directions (`ct packets`, accounting on in the lab); from the 26th, nothing passes.
    port = lab.ports["video"]
    run = lab.run(nft=[f"ip daddr {SERVER_IP} udp dport {port} ct packets > {FREEZE_PACKETS} drop",
                       f"ip saddr {SERVER_IP} udp sport {port} ct packets > {FREEZE_PACKETS} drop"])
    expect(lab, run, {"video": ("blocked", "udp.cutoff")})
    video = run.target("video")
    _has(video, "calls connect, then go silent", "the flow is frozen, not the address")
    stun = _stun(video)
    # 13 requests and 12 answers are the first 25 packets; the 13th answer is the 26th.
    assert stun["answered"] == FREEZE_PACKETS // 2, stun
    assert stun["silent_after_packets"] + stun["answered"] <= FREEZE_PACKETS + 1, stun
    assert stun["fresh_flow_answered"], stun


def test_targeted_udp_drop_with_tcp_allowed_is_udp_timeout_targeted(lab: Lab) -> None:
    run = lab.run(nft=[f"ip daddr {TARGETED} meta l4proto udp drop"])
    expect(lab, run, {"relay": ("blocked", "udp.timeout")})
    _has(run.target("relay"), "targeted: the generic STUN control",
         "UDP to this address is dropped, TCP is not")


def test_gurgling_relay_is_call_poor(lab: Lab) -> None:
    port = lab.ports["gurgle"]
    helper = lab.censor.queue([f"ip daddr {GURGLING} udp dport {port}",
                               f"ip saddr {GURGLING} udp sport {port}"], "lossjitter",
                              lab.folder, loss=GURGLE_LOSS, jitter_ms=GURGLE_JITTER_MS, seed=16)
    run = lab.run()  # stops the helper when done
    stats = helper.stats()
    expect(lab, run, {"gurgle": ("degraded", "call.poor")})
    gurgle = run.target("gurgle")
    _has(gurgle, "a call would sound poor", "MOS")
    assert stats["dropped"] > 0 and stats["delayed"] > 0, stats  # the helper stood in the path
    assert 0 < _stun(gurgle)["answered"] < _stun(gurgle)["sent"], _stun(gurgle)


def test_rate_limited_server_is_ok_in_both_runs(lab: Lab, unruled: ProbeRun) -> None:
    assert lab.baseline is not None
    for run in (lab.baseline, unruled):
        busy = run.target("busy")
        stun = _stun(busy)
        # Most requests go unanswered, and still neither loss nor a poor call is read.
        assert (busy["status"], busy["reason"]) == ("ok", "ok"), (busy["detail"], stun)
        assert stun["answered"] < stun["sent"] / 2, stun
        _has(busy, f"a steady {BUSY_RATE} requests a second", "rate limit")


def test_no_rules_every_calls_target_ok(lab: Lab, unruled: ProbeRun) -> None:
    expect(lab, unruled, dict.fromkeys(CALL_PATHS, ("ok", "ok")))
    for name in CALL_PATHS:
        stun = _stun(unruled.target(name))
        assert stun.get("call") and stun["answered"], (name, stun)


def test_all_udp_dropped_but_the_isp_resolver_is_not_stun_filtered(lab: Lab) -> None:
    # Mobile networks that drop all encrypted UDP (CENSORSHIP.md) still answer DNS from their
    # own resolver, which here sits on the censor itself (input, not forward). STUN and QUIC
    # dying together is UDP blocked, not STUN classified: only TCP relays can carry a call.
    run = lab.run(nft=["meta l4proto udp drop"])
    timeout = ("blocked", "udp.timeout")
    expect(lab, run, dict.fromkeys(CALL_PATHS, timeout))
    for name in CALL_PATHS:
        _has(run.target(name), "UDP is blocked on this network")
