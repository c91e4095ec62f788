"""Lab: the censor's NFQUEUE helper (nfqueue.py) acts on real traffic: loss with jitter on a STUN
relay (a gurgling call) and QUIC Initials dropped by their decrypted SNI; plus its parts offline."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from typing import Any

import nfqueue
import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from netns import SERVER_IP, ProbeRun
from scenario import Lab, MakeLab, expect_clean_baseline, server, target

pytestmark = pytest.mark.lab

OPEN, BLOCKED = "open.lab.test", "blocked.lab.test"
STUN_REQUESTS = 40
# Issue 16's gurgling relay is 15 % each way; 30 % each way makes the loss unmistakable over 40
# requests: a request and its answer both pass with p = 0.49, so the expected loss is 51 % and
# under 15 % or over 85 % has p < 1e-6.
LOSS, JITTER_MS = 0.3, 80.0


@pytest.fixture(scope="module")
def lab(make_lab: MakeLab) -> Iterator[Lab]:
    servers = [
        server("stun", "stun"),
        # One address, two names: what the censor tells apart is the name, not where it goes.
        server("quicopen", "quic", port=443, name=OPEN),
        server("quicblocked", "quic", port=8443, name=BLOCKED),
    ]

    def targets(ports: dict[str, int]) -> list[dict[str, object]]:
        return [
            target("stun", f"stun://{SERVER_IP}:{ports['stun']}", feature="calls",
                   attempts=STUN_REQUESTS, call=False),  # a train: its RTTs are each listed
            target("quicopen", f"quic://{OPEN}:443", feature="web", address=SERVER_IP),
            target("quicblocked", f"quic://{BLOCKED}:8443", feature="web", address=SERVER_IP),
        ]

    made = make_lab(servers, targets)
    try:
        yield made
    finally:
        made.censor.clear()  # a test that failed before its run must not leave a helper behind


def _phase(run: ProbeRun, name: str, layer: str) -> dict[str, Any]:
    phases = run.target(name)["phases"]
    assert layer in phases, f"{name}: no {layer} phase in {phases}"
    return dict(phases[layer])


def _held_rtts(rtts: list[float]) -> None:
    """RTTs of exchanges held 0..80 ms each way: unheld ones take under a millisecond here. The
    hold is a floor on each RTT, so a slow machine raises and widens them, never the reverse; a
    lone slow first exchange (ARP) can widen the range but neither the median nor the IQR."""
    q1, median, q3 = statistics.quantiles(rtts, n=4)
    assert median >= 20 and q3 - q1 >= 15, f"RTTs (ms) not held as the helper holds: {rtts}"


def _stun_both_ways(lab: Lab) -> list[str]:
    port = lab.ports["stun"]
    return [f"ip daddr {SERVER_IP} udp dport {port}", f"ip saddr {SERVER_IP} udp sport {port}"]


def test_baseline_without_rules_is_clean(lab: Lab) -> None:
    expect_clean_baseline(lab)


def test_lossjitter_loses_and_spreads_stun_answers(lab: Lab) -> None:
    helper = lab.censor.queue(_stun_both_ways(lab), "lossjitter", lab.folder,
                              loss=LOSS, jitter_ms=JITTER_MS, seed=16)
    run = lab.run()  # clears the rules and stops the helper when done
    stun, stats = _phase(run, "stun", "stun"), helper.stats()
    context = f"stun phase: {stun}\nhelper: {stats}"
    assert stun["sent"] == STUN_REQUESTS, context
    assert 0.15 <= stun["loss"] <= 0.85, context
    # Every packet the helper saw got its verdict; what it dropped is what the probe lost: each
    # request it passed reached the server and was answered, so it saw sent + passed requests.
    assert stats["held"] == 0 and stats["accepted"] + stats["dropped"] == stats["seen"], context
    passed_requests = stats["seen"] - STUN_REQUESTS
    assert stats["dropped"] == (STUN_REQUESTS - passed_requests) + (
        passed_requests - stun["answered"] - stun.get("late", 0)), context
    _held_rtts(stun["rtt_ms"])


def test_lossjitter_without_loss_loses_nothing(lab: Lab) -> None:
    helper = lab.censor.queue(_stun_both_ways(lab), "lossjitter", lab.folder,
                              loss=0.0, jitter_ms=JITTER_MS, seed=16)
    run = lab.run()
    stun, stats = _phase(run, "stun", "stun"), helper.stats()
    context = f"stun phase: {stun}\nhelper: {stats}"
    assert (stun["sent"], stun["answered"], stun["lost"]) == (STUN_REQUESTS, STUN_REQUESTS, 0), (
        context)
    # The helper really stood in the path: both directions, every packet held, none dropped.
    assert stats["seen"] == 2 * STUN_REQUESTS and stats["dropped"] == 0, context
    assert stats["delayed"] == stats["seen"], context
    _held_rtts(stun["rtt_ms"])


def test_quic_sni_drops_the_blocked_name_only(lab: Lab) -> None:
    helper = lab.censor.queue(f"ip daddr {SERVER_IP} udp dport {{ 443, 8443 }}", "quic-sni",
                              lab.folder, block=[BLOCKED])
    run = lab.run()
    stats = helper.stats()
    blocked, open_ = run.target("quicblocked"), run.target("quicopen")
    context = f"blocked: {blocked}\nopen: {open_}\nhelper: {stats}"
    assert (open_["status"], open_["reason"]) == ("ok", "ok"), context
    # Every handshake with the name times out, while the version ping (no ClientHello, so no
    # name) is answered: the probe can tell the name is what is filtered.
    assert (blocked["status"], blocked["reason"]) == ("blocked", "quic.sni_filtered"), context
    assert _phase(run, "quicblocked", "quic")["failure"] == "timeout", context
    # The harmless-name control handshake to the same address got through before the samples.
    control = blocked["observation"]["diagnosis"]["quic_control"]
    assert control["ok"] and control["before_samples"], context
    # The helper decrypted every name (the control's too), and dropped only Initials (one per
    # blocked datagram).
    assert set(stats["snis"]) == {OPEN, BLOCKED, control["sni"]}, context
    assert stats["dropped"] == stats["snis"][BLOCKED] > 0, context


# --- the helper's parts, offline ----------------------------------------------------------------


def _client_initial(name: str) -> bytes:
    """A real first datagram of a QUIC v1 client (aioquic), wrapped in IPv4 and UDP headers."""
    connection = QuicConnection(configuration=QuicConfiguration(
        is_client=True, server_name=name, alpn_protocols=["h3"]))
    connection.connect((SERVER_IP, 443), now=0.0)
    datagram = connection.datagrams_to_send(now=0.0)[0][0]
    return bytes([0x45]) + bytes(8) + bytes([17]) + bytes(10) + bytes(8) + datagram


def test_quic_sni_reads_the_name_from_a_real_initial() -> None:
    policy = nfqueue.QuicSni(block=["Blocked.Lab.Test."])
    assert policy.decide(_client_initial(BLOCKED)) == nfqueue.DROP
    assert policy.decide(_client_initial(OPEN)) == nfqueue.ACCEPT
    assert policy.summary()["snis"] == {BLOCKED: 1, OPEN: 1}


def test_quic_sni_passes_what_is_not_a_v1_initial() -> None:
    policy = nfqueue.QuicSni(block=[BLOCKED])
    initial = _client_initial(BLOCKED)
    udp = 28
    other_version = initial[:udp + 1] + bytes.fromhex("1a2a3a4a") + initial[udp + 5:]
    short_header = initial[:udp] + bytes([0x40]) + initial[udp + 1:]
    tcp = initial[:9] + bytes([6]) + initial[10:]
    broken = initial[:udp + 60]
    for packet in (other_version, short_header, tcp, broken, b""):
        assert policy.decide(packet) == nfqueue.ACCEPT
    assert policy.summary()["snis"] == {}


def test_client_hello_is_reassembled_from_fragments_in_any_order() -> None:
    [(_, payload)] = nfqueue.client_initials(_client_initial(BLOCKED)[28:])
    [(offset, hello)] = nfqueue._crypto_frames(payload)
    assert offset == 0
    fragments = nfqueue._Hello()
    cuts = [(0, 50), (30, 120), (120, len(hello))]  # overlapping, then given last-first
    for start, end in reversed(cuts[1:]):
        fragments.add(start, hello[start:end])
        fragments.parse()
        assert not fragments.done  # the start is missing: nothing to read yet
    fragments.add(0, hello[:50])
    fragments.parse()
    assert (fragments.done, fragments.sni) == (True, BLOCKED)


def test_lossjitter_is_repeatable_and_within_bounds() -> None:
    def decisions(seed: int) -> list[nfqueue.Decision]:
        policy = nfqueue.LossJitter(loss=0.25, jitter_ms=80, seed=seed)
        return [policy.decide(b"") for _ in range(400)]

    first = decisions(7)
    assert first == decisions(7) != decisions(8)
    dropped = [d for d in first if d.verdict == nfqueue.NF_DROP]
    assert 40 <= len(dropped) <= 160
    assert all(0 <= d.delay <= 0.080 for d in first)
    assert nfqueue.LossJitter(loss=0.0, seed=1).decide(b"") == nfqueue.ACCEPT


def test_held_packets_come_out_when_due_in_time_order() -> None:
    held = nfqueue.Held()
    assert held.wait(now=0.0) is None
    held.hold(10.08, 1, nfqueue.NF_ACCEPT)
    held.hold(10.02, 2, nfqueue.NF_ACCEPT)
    held.hold(10.02, 3, nfqueue.NF_DROP)
    assert held.wait(now=10.0) == pytest.approx(0.02)
    assert held.due(now=10.01) == []
    assert held.due(now=10.05) == [(2, nfqueue.NF_ACCEPT), (3, nfqueue.NF_DROP)]
    assert held.due(now=None) == [(1, nfqueue.NF_ACCEPT)] and len(held) == 0
