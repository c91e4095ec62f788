"""Verdicts II, rule by rule (classify/tls.py, network.py, dns.py, quic.py): residual blocks,
captive portals, short outages, QUIC filtered by name, a name blocked while its address works;
each with the look-alike it must not be confused with."""

from __future__ import annotations

from typing import Any

import pytest
from builders import judge_subject, obs, ph, sample

from probe import classify
from probe.classify import Subject
from probe.classify.tls import is_residual
from probe.observations import Observation, Sample
from probe.results import TargetResult

IP = "157.240.1.1"
TLS = "tls://chat.example.org:443"


def dns(name: str = "chat.example.org", answers: tuple[str, ...] = (IP,)) -> dict[str, Any]:
    return ph(ms=3.0, name=name, answers=list(answers), crosscheck_answers=list(answers),
              transport="udp")


def tcp(ok: bool = True, failure: str | None = None, address: str = IP) -> dict[str, Any]:
    return ph(ok=ok, ms=40.0 if ok else 5000.0, failure=failure, address=address, port=443,
              error=failure)


def tls(failure: str | None = None, first_record: str | None = None) -> dict[str, Any]:
    return ph(ok=failure is None, ms=80.0, failure=failure, error=failure, sni="chat.example.org",
              first_record=first_record)


CONTROL = ph(ms=30.0, sni="example.com", reply="server_hello", before_samples=True)


@pytest.mark.parametrize(("reasons", "residual"), [
    (["tls.reset", "tcp.timeout", "tcp.timeout"], True),
    (["tls.timeout", "tcp.timeout"], True),
    (["tls.reset", "tcp.reset", "tcp.timeout"], True),
    (["tls.reset", "tcp.timeout", "tls.reset"], False),  # one lost SYN among answered samples
    (["tcp.timeout", "tls.reset", "tcp.timeout"], False),  # a connect failing first
    (["tcp.timeout", "tcp.timeout", "tcp.timeout"], False),  # an IP block
    (["tls.reset"], False),
])
def test_residual_pattern(reasons: list[str], residual: bool) -> None:
    assert is_residual(reasons) is residual


def judge_tls(*samples: Sample, **steps: dict[str, Any]) -> TargetResult:
    return judge_subject(Subject("app", "messaging", TLS), obs(*samples, **steps))


def test_a_penalty_box_after_the_first_clienthello_is_sni_filtering() -> None:
    result = judge_tls(sample(dns=dns(), tcp=tcp(), tls=tls("connection_reset")),
                       *[sample(dns=dns(), tcp=tcp(False, "timeout"))] * 2,
                       sni_control=CONTROL)
    assert (result.status, result.reason) == ("blocked", "tls.sni_filtered"), result.detail
    assert "residual block" in result.detail and "tls.reset" in result.detail


def test_one_syn_timeout_among_answered_samples_is_not_residual() -> None:
    result = judge_tls(sample(dns=dns(), tcp=tcp(), tls=tls("connection_reset")),
                       sample(dns=dns(), tcp=tcp(False, "timeout")),
                       sample(dns=dns(), tcp=tcp(), tls=tls("connection_reset")),
                       sni_control=CONTROL)
    # still SNI filtering (the resets and the control say so), but not called residual
    assert result.reason == "tls.sni_filtered" and "residual" not in result.detail


def test_an_ip_block_with_a_control_that_failed_too_is_not_sni_filtering() -> None:
    failed_control = ph(ok=False, failure="timeout", sni="example.com", before_samples=True,
                        error="no ServerHello")
    result = judge_tls(*[sample(dns=dns(), tcp=tcp(False, "timeout"))] * 3,
                       sni_control=failed_control)
    assert result.reason == "tcp.timeout"


def test_a_server_that_alerts_every_name_is_not_filtering_names() -> None:
    alert_control = {**CONTROL, "reply": "alert"}
    result = judge_tls(*[sample(dns=dns(), tcp=tcp(), tls=tls("tls_alert", "alert"))] * 3,
                       sni_control=alert_control)
    assert result.reason == "tls.alert" and "not a filter" in result.detail


# --- the network: captive portals, short outages ----------------------------------------------


def control(url: str, *samples: Sample) -> TargetResult:
    return judge_subject(Subject(None, None, url), obs(*samples))


def https_ok(name: str, answers: tuple[str, ...] = (IP,), at: float | None = None) -> Sample:
    s = sample(dns=dns(name, answers), tcp=tcp(address=answers[0]), tls=tls(),
               http=ph(ms=50.0, status=200, bytes=1000, transfer_ms=50.0, throughput=160000))
    s.at_ms = at
    return s


def portal(name: str) -> Sample:
    return sample(dns=dns(name, ("192.168.88.1",)), tcp=tcp(address="192.168.88.1"),
                  tls=tls("hostname_mismatch"))


def test_under_a_captive_portal_even_passing_targets_are_inconclusive() -> None:
    controls = [control("https://example.com/", portal("example.com")),
                control("https://example.net/", portal("example.net"))]
    network = classify.judge_network(controls)
    assert network.reason == "network.captive"
    reached_portal = judge_subject(Subject("app", "chat", "tcp://chat.example.org:5222"),
                                   obs(sample(dns=dns(answers=("192.168.88.1",)),
                                              tcp=tcp(address="192.168.88.1"))))
    named = judge_subject(Subject("app", "dns", "dns://chat.example.org"),
                          obs(sample(dns=dns(answers=("192.168.88.1",)))))
    assert reached_portal.status == "ok" and named.status == "ok"  # judged alone they pass
    after = classify.apply_network(network, [reached_portal, named])
    assert {(t.status, t.reason) for t in after} == {("inconclusive", "network.captive")}


def test_one_cdn_answer_without_a_portal_is_not_captive() -> None:
    controls = [control("https://example.com/", https_ok("example.com", ("23.1.2.3",))),
                control("https://example.net/", https_ok("example.net", ("151.101.1.1",)))]
    assert classify.judge_network(controls).reason == "ok"


def test_failures_in_an_outage_at_the_start_are_the_networks() -> None:
    down_then_up = [sample(tcp=tcp(False, "timeout")), https_ok("example.com"),
                    https_ok("example.com")]
    for s, at in zip(down_then_up, (0.0, 5100.0, 5200.0), strict=True):
        s.at_ms = at
    controls = [control("https://example.com/", *down_then_up),
                control("https://example.net/", *down_then_up)]
    network = classify.judge_network(controls)
    assert network.status == "ok" and network.outage_until_ms == 5100.0
    assert "short network-wide outage" in network.detail
    target = judge_subject(Subject("app", "chat", "tcp://chat.example.org:5222"),
                           obs(*[sample(dns=dns(), tcp=tcp(ok, None if ok else "timeout"))
                                 for ok in (False, True, True)]))
    for s, at in zip(target.observation.samples, (10.0, 5300.0, 5400.0), strict=True):
        s.at_ms = at
    [after] = classify.apply_network(network, [target])
    assert after.status == "degraded" and "the network's, not a censor's" in after.detail


def test_a_target_measured_only_in_the_outage_is_never_blocked() -> None:
    down_then_up = [sample(tcp=tcp(False, "timeout")), https_ok("example.com")]
    for s, at in zip(down_then_up, (0.0, 5100.0), strict=True):
        s.at_ms = at
    network = classify.judge_network([control("https://example.com/", *down_then_up)])
    only_then = judge_subject(Subject("app", "calls", "stun://stun.example.org:3478"),
                              obs(sample(dns=ph(ok=False, ms=2000.0, failure="timeout",
                                                name="stun.example.org"))))
    only_then.observation.samples[0].at_ms = 150.0
    assert only_then.status == "blocked"  # judged alone
    [after] = classify.apply_network(network, [only_then])
    assert (after.status, after.reason) == ("inconclusive", "network.down")
    assert "measured only in the network-wide outage" in after.detail


def test_a_target_failing_after_the_outage_gets_no_such_note() -> None:
    up = [https_ok("example.com", at=at) for at in (100.0, 200.0)]
    controls = [control("https://example.com/", *up)]
    network = classify.judge_network(controls)
    assert network.outage_until_ms is None  # no control failed: no outage
    target = judge_subject(Subject("app", "chat", "tcp://chat.example.org:5222"),
                           obs(sample(dns=dns(), tcp=tcp(False, "timeout")),
                               sample(dns=dns(), tcp=tcp())))
    [after] = classify.apply_network(network, [target])
    assert "outage" not in after.detail


# --- a name blocked by DNS, its address tried -----------------------------------------------


def nxdomain() -> Sample:
    return sample(dns=ph(ok=False, ms=20.0, failure="nxdomain", name="stun.example.org",
                         answers=[], crosscheck_answers=[IP]))


@pytest.mark.parametrize(("fallback", "expected", "words"), [
    (ph(ms=50.0, address=IP), ("degraded", "dns.nxdomain"), "only the name is blocked"),
    (ph(ok=False, ms=5000.0, failure="timeout", address=IP, failed_layer="stun"),
     ("blocked", "dns.nxdomain"), "fails too (udp.timeout)"),
    (None, ("blocked", "dns.nxdomain"), "DoH cross-check resolves it"),
])
def test_a_dns_blocked_name_is_told_apart_by_its_baseline_address(
        fallback: dict[str, Any] | None, expected: tuple[str, str], words: str) -> None:
    steps = {"dns_fallback": fallback} if fallback is not None else {}
    observation: Observation = obs(*[nxdomain()] * 3, **steps)
    result = judge_subject(Subject("app", "calls", "stun://stun.example.org:3478"), observation)
    assert (result.status, result.reason) == expected and words in result.detail
