"""Calls judged as calls (classify/udp.py, classify/calls.py): quality, look-alikes, why a call
fails, in tables of facts; and the classifier changes nothing it is given."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from builders import judge_subject, obs, ph, run_of, sample

from probe import classify
from probe.classify import Subject
from probe.observations import Observation
from probe.results import TargetResult

STUN = "stun://198.51.100.7:3478"
CONTROL = "stun://stun.example.net:19302"


def flow(answered: int = 250, *, sent: int = 250, rtt: float = 60.0, jitter: float = 2.0,
         bursts: int = 0, per_second: list[int] | None = None, **more: Any) -> dict[str, Any]:
    lost = sent - answered
    facts = ph(ok=answered > 0, ms=rtt, failure=None if answered else "timeout", sent=sent,
               answered=answered, lost=lost, loss=lost / sent, call=True, rate=50.0, size=160,
               rtt_median_ms=rtt if answered else None, jitter_ms=jitter, loss_bursts=bursts,
               answered_per_s=per_second or [answered // 5] * 5)
    return {**facts, **more}


def judge(observation: Observation, baseline: Observation | None = None) -> TargetResult:
    base = None
    if baseline is not None:
        base = run_of([judge_subject(Subject("app", "calls", STUN), baseline)])
    return judge_subject(Subject("app", "calls", STUN), observation, base)


@pytest.mark.parametrize(("case", "facts", "before", "expected", "words"), [
    ("clean", flow(), None, ("ok", "ok"), "a call would sound fine: MOS 4.4"),
    ("gurgle: 28 % loss, 27 ms jitter", flow(180, jitter=27.0, bursts=60), None,
     ("degraded", "call.poor"), "MOS 2"),
    ("gurgle in the baseline too: the path", flow(180, jitter=27.0, bursts=60),
     flow(182, jitter=25.0, bursts=58), ("ok", "ok"), "as in the baseline"),
    ("one lost in a hundred", flow(248, bursts=2), None, ("ok", "ok"), "within chance"),
    ("steady 5 a second: a rate limit", flow(26, bursts=25, per_second=[5, 6, 5, 5, 5]), None,
     ("ok", "ok"), "a steady 5 requests a second"),
    ("random heavy loss is not a rate limit", flow(60, bursts=50,
                                                   per_second=[16, 8, 14, 9, 13]),
     None, ("degraded", "call.poor"), "MOS"),
    ("a 600 ms satellite round trip is no poor call", flow(rtt=600.0), flow(rtt=590.0),
     ("ok", "ok"), "MOS"),
])
def test_call_quality(case: str, facts: dict[str, Any], before: dict[str, Any] | None,
                      expected: tuple[str, str], words: str) -> None:
    result = judge(obs(sample(stun=facts)),
                   obs(sample(stun=before)) if before is not None else None)
    assert (result.status, result.reason) == expected, result.detail
    assert words in result.detail, result.detail


def test_a_cut_off_says_when_and_whether_the_flow_or_the_address() -> None:
    frozen = flow(13, ok=False, failure="cutoff", silent_after_packets=13,
                  silent_after_bytes=2080, silent_after_s=0.26, fresh_flow_sent=5,
                  fresh_flow_answered=5)
    result = judge(obs(sample(stun=frozen)))
    assert (result.status, result.reason) == ("blocked", "udp.cutoff")
    assert "after 13 requests and 13 answers (26 packets, 2.1 KB sent), 0.3 s in" in result.detail
    assert "the flow is frozen, not the address" in result.detail
    blocked = {**frozen, "fresh_flow_answered": 0}
    assert "is not answered either" in judge(obs(sample(stun=blocked))).detail


def run_level(controls: list[tuple[str, Observation]],
              targets: list[tuple[str, str, Observation]]) -> list[TargetResult]:
    """Judge a run; a TCP control that works is always there (the network is up)."""
    up = ("tcp://192.0.2.1:443", obs(sample(tcp=ph(address="192.0.2.1", port=443))))
    judged_controls = [judge_subject(Subject(None, None, url), o) for url, o in [*controls, up]]
    judged = [judge_subject(Subject("app", feature, url), o) for url, feature, o in targets]
    return classify.judge_groups(classify.judge_network(judged_controls), judged, {}, {})[1]


SILENT = obs(sample(stun=flow(0)))
DNS_UDP = {"ok": True, "ms": 3.0, "name": "x.example.org", "answers": ["198.51.100.7"],
           "transport": "udp"}


def quic(ok: bool) -> Observation:
    return obs(sample(quic=ph(ok=ok, failure=None if ok else "timeout", server_packet=ok)))


def stun_train(answered: int) -> Observation:
    return obs(sample(stun=ph(ok=answered > 0, failure=None if answered else "timeout",
                              sent=3, answered=answered, lost=3 - answered)))


def test_stun_silent_everywhere_while_quic_answers_is_stun_filtered() -> None:
    [target] = run_level([(CONTROL, stun_train(0)), ("quic://q.example.net", quic(True))],
                         [(STUN, "calls", SILENT)])
    assert (target.status, target.reason) == ("blocked", "udp.stun_filtered")


def test_without_other_udp_answered_it_is_not_called_classification() -> None:
    [target] = run_level([(CONTROL, stun_train(0)), ("quic://q.example.net", quic(False))],
                         [(STUN, "calls", SILENT)])
    assert target.reason == "udp.timeout"


def test_dns_to_the_networks_own_resolver_is_no_udp_leaving_it() -> None:
    """DNS over UDP answered by the ISP's resolver says nothing of UDP abroad: with no QUIC
    answered, every UDP path is dead, not STUN classified."""
    answered = obs(sample(dns=DNS_UDP, tcp=ph(address="198.51.100.9", port=443)))
    [target, _] = run_level([(CONTROL, stun_train(0))],
                            [(STUN, "calls", SILENT), ("tcp://x.example.org:443", "chat",
                                                       answered)])
    assert target.reason == "udp.timeout"
    assert "UDP is blocked on this network" in target.detail
    assert "DNS over UDP still passes" in target.detail


def test_targeted_when_the_generic_control_answers_and_tcp_to_the_same_address_works() -> None:
    tcp = obs(sample(tcp=ph(address="198.51.100.7", port=443)))
    [target, _] = run_level([(CONTROL, stun_train(3))],
                            [(STUN, "calls", SILENT), ("tcp://198.51.100.7:443", "chat", tcp)])
    assert target.reason == "udp.timeout"
    assert "targeted: the generic STUN control" in target.detail
    assert "UDP to this address is dropped, TCP is not" in target.detail


def test_no_udp_at_all_while_tcp_works() -> None:
    tcp = obs(sample(tcp=ph(address="192.0.2.9", port=443)))
    [target, _] = run_level([(CONTROL, stun_train(0))],
                            [(STUN, "calls", SILENT), ("tcp://192.0.2.9:443", "chat", tcp)])
    assert "UDP is blocked on this network; only TCP relays can carry a call" in target.detail


def test_judging_changes_nothing_it_is_given() -> None:
    """Pure: the same observation judged twice gives equal results and stays as it was."""
    observation = obs(sample(stun=flow(180, jitter=27.0, bursts=60)))
    before = copy.deepcopy(observation)
    first, second = judge(observation), judge(observation)
    assert first == second and observation == before
    controls = [judge_subject(Subject(None, None, CONTROL), stun_train(0))]
    targets = [judge_subject(Subject("app", "calls", STUN), SILENT)]
    kept = [t.model_copy(deep=True) for t in targets]
    network = classify.judge_network(controls)
    classify.judge_groups(network, targets, {}, {})
    assert targets == kept  # judge_groups returned new results; these are as they were
