"""Calls diagnosed against a reflector (classify/calls.py `Reflected`): each technique named by
the differences between shapes and ports, said to be measured, never inferred."""

from __future__ import annotations

from typing import Any

import pytest
from builders import judge_subject, obs, ph, sample

from probe import classify
from probe.classify import Subject
from probe.results import TargetResult

REFLECTOR = "198.51.100.20"
CALL_PORT, CONTROL_PORT = 3478, 40000


def flow(answered: int, *, sent: int = 150, cut_after: int | None = None,
         direction: str | None = None) -> dict[str, Any]:
    facts = ph(ok=answered > 0 and cut_after is None, ms=30.0,
               failure=("cutoff" if cut_after is not None else None if answered else "timeout"),
               sent=sent, answered=answered, lost=sent - answered, loss=(sent - answered) / sent,
               call=True, rate=50.0, size=160, rtt_median_ms=30.0 if answered else None,
               jitter_ms=1.0, loss_bursts=1 if answered < sent else 0,
               answered_per_s=[answered // 3] * 3)
    if cut_after is not None:
        facts.update(silent_after_packets=cut_after, silent_after_s=cut_after / 50,
                     reflector_received=sent if direction == "down" else cut_after,
                     direction=direction)
    return facts


def reflector_flow(port: int, shape: str, facts: dict[str, Any]) -> TargetResult:
    kind = "control port" if port == CONTROL_PORT else "port"
    subject = Subject(None, "reflector", f"reflect://{REFLECTOR}:{port}?shape={shape}",
                      name=f"reflector {kind} {port} {shape}")
    return judge_subject(subject, obs(sample(reflect=facts)))


SILENT_CALL = obs(sample(stun=flow(0)))


def diagnosed(flows: dict[tuple[int, str], dict[str, Any]],
              target: Any = SILENT_CALL) -> TargetResult:
    reflector = [reflector_flow(port, shape, facts) for (port, shape), facts in flows.items()]
    up = judge_subject(Subject(None, None, "tcp://192.0.2.1:443"),
                       obs(sample(tcp=ph(address="192.0.2.1", port=443))))
    calls = judge_subject(Subject("app", "calls", f"stun://203.0.113.5:{CALL_PORT}"), target)
    _, [result], _, _ = classify.judge_groups(classify.judge_network([up]), [calls], {}, {},
                                              reflector)
    return result


OK = flow(150)
DEAD = flow(0)


@pytest.mark.parametrize(("case", "flows", "reason", "words"), [
    ("STUN-shaped dropped, random passes: classified",
     {(CALL_PORT, "stun"): DEAD, (CALL_PORT, "random"): OK,
      (CONTROL_PORT, "stun"): DEAD, (CONTROL_PORT, "random"): OK},
     "udp.stun_filtered", "STUN-shaped datagrams to port 3478 are dropped while random"),
    ("every shape dropped on the call port, the control port passes: the port",
     {(CALL_PORT, "stun"): DEAD, (CALL_PORT, "random"): DEAD,
      (CONTROL_PORT, "stun"): OK, (CONTROL_PORT, "random"): OK},
     "udp.timeout", "every datagram to UDP port 3478 is dropped, whatever its shape"),
    ("everything to the reflector dropped: its address",
     {(CALL_PORT, "stun"): DEAD, (CALL_PORT, "random"): DEAD,
      (CONTROL_PORT, "stun"): DEAD, (CONTROL_PORT, "random"): DEAD},
     "udp.timeout", "pick another reflector"),
    ("everything passes to the call port: the platform's servers are targeted",
     {(CALL_PORT, "stun"): OK, (CALL_PORT, "random"): OK,
      (CONTROL_PORT, "stun"): OK, (CONTROL_PORT, "random"): OK},
     "udp.timeout", "the platform's servers are targeted"),
])
def test_silent_call_target(case: str, flows: dict[tuple[int, str], dict[str, Any]],
                            reason: str, words: str) -> None:
    result = diagnosed(flows)
    assert result.reason == reason, result.detail
    assert f"measured against the reflector at {REFLECTOR}" in result.detail
    assert words in result.detail


def test_a_freeze_is_measured_with_its_direction() -> None:
    cut = flow(13, cut_after=13, direction="down")
    flows = {(CALL_PORT, "stun"): cut, (CALL_PORT, "random"): cut,
             (CONTROL_PORT, "stun"): OK, (CONTROL_PORT, "random"): OK}
    frozen_call = obs(sample(stun={**flow(13, cut_after=13), "reflector_received": None}))
    result = diagnosed(flows, frozen_call)
    assert result.reason == "udp.cutoff"
    assert "flows to port 3478 are frozen after 13 requests" in result.detail
    assert "the reflector's answers stop coming back" in result.detail


def test_a_call_target_that_works_is_left_alone() -> None:
    flows = {(CALL_PORT, "stun"): DEAD, (CALL_PORT, "random"): OK}
    result = diagnosed(flows, obs(sample(stun=flow(150))))
    assert result.status == "ok" and "reflector" not in result.detail


def name_diagnosed(there: Any) -> TargetResult:
    """A platform's TLS target reset after its ClientHello (no control), and the same name sent
    to the reflector's TLS port with the result `there`."""
    handshake = judge_subject(
        Subject(None, "reflector", f"reflect://{REFLECTOR}:443?transport=tls",
                name="reflector tls chat.example"), there)
    up = judge_subject(Subject(None, None, "tcp://192.0.2.1:443"),
                       obs(sample(tcp=ph(address="192.0.2.1", port=443))))
    reset = obs(sample(tcp=ph(address="203.0.113.9", port=443),
                       tls=ph(ok=False, failure="connection_reset", sni="chat.example")))
    target = judge_subject(Subject("app", "messaging", "tls://chat.example:443"), reset)
    _, [result], _, _ = classify.judge_groups(classify.judge_network([up]), [target], {}, {},
                                              [handshake])
    return result


def test_the_name_cut_at_the_reflector_too_is_filtered_wherever_it_goes() -> None:
    there = obs(sample(tcp=ph(address=REFLECTOR, port=443),
                       tls=ph(ok=False, failure="connection_reset", sni="chat.example")),
                sni_control=ph(sni="example.com", reply="server_hello"))
    result = name_diagnosed(there)
    assert result.status == "blocked"
    assert "a handshake naming chat.example is cut there too" in result.detail
    assert f"measured against the reflector at {REFLECTOR}" in result.detail


def test_the_name_passing_at_the_reflector_points_at_the_addresses() -> None:
    there = obs(sample(tcp=ph(address=REFLECTOR, port=443),
                       tls=ph(sni="chat.example", version="TLSv1.3")))
    result = name_diagnosed(there)
    assert "a handshake naming chat.example passes there" in result.detail
    assert "the block is tied to the platform's addresses" in result.detail


def test_an_unknown_answer_at_the_reflector_explains_nothing() -> None:
    there = obs(sample(tcp=ph(ok=False, failure="timeout", address=REFLECTOR, port=443)))
    assert "reflector" not in name_diagnosed(there).detail


def test_a_transfer_frozen_at_the_reflector_too_follows_the_name() -> None:
    frozen = ph(ok=False, failure="stall", direction="down", down=16000, total=65536,
                chunks=[1024, 16384], error="the transfer froze down: 16000 of 131072 bytes "
                                            "down, then nothing for 5 s")
    there = obs(sample(tcp=ph(address=REFLECTOR, port=443),
                       tls=ph(sni="chat.example", version="TLSv1.3"), transfer=frozen))
    result = name_diagnosed(there)
    assert "a transfer naming chat.example froze there too (the transfer froze down: 16000" \
        in result.detail
    assert "the freeze follows the name wherever it goes" in result.detail


def test_a_transfer_passing_at_the_reflector_says_how_much_moved() -> None:
    moved = ph(down=131072, up=131072, total=65536, chunks=[1024, 16384])
    there = obs(sample(tcp=ph(address=REFLECTOR, port=443),
                       tls=ph(sni="chat.example", version="TLSv1.3"), transfer=moved))
    assert "a handshake and 128 KiB each way naming chat.example passes there" in \
        name_diagnosed(there).detail
