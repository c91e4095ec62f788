"""DNS verdicts from dns-phase facts, as tables (no network), plus the layer's pure helpers."""

from __future__ import annotations

from typing import Any

import pytest

from probe.classify import dns as C
from probe.classify.dns import BaselineDns, judge, judge_phase
from probe.classify.verdict import Verdict
from probe.observations import DnsFacts, Observation, Sample, TcpFacts
from probe.results import TargetResult

NAME = "web.whatsapp.com"


def phase(**facts: Any) -> DnsFacts:
    facts.setdefault("ok", True)
    facts.setdefault("name", NAME)
    facts.setdefault("resolver", "system")
    return DnsFacts.model_validate(facts)


def sr(verdict: Verdict | None) -> tuple[str, str] | None:
    """(status, reason) of a verdict, or None."""
    return None if verdict is None else (verdict.status, verdict.reason)


def failed(failure: str, **facts: Any) -> DnsFacts:
    return phase(ok=False, failure=failure, answers=[], **facts)


OK = ("ok",)  # the verdict is None: nothing to complain about

# (case, phase facts, baseline, expected (status, reason) or OK), in the order judge_phase decides
CASES: list[tuple[str, DnsFacts, BaselineDns | None, tuple[str, ...]]] = [
    ("nxdomain, cross-check resolves",
     failed("nxdomain", crosscheck_answers=["157.240.1.1"], crosscheck_rcode="NOERROR"), None,
     ("blocked", "dns.nxdomain")),
    ("no answer, cross-check resolves",
     failed("no_answer", crosscheck_answers=["157.240.1.1"]), None, ("blocked", "dns.nxdomain")),
    ("forged nxdomain first, genuine later",
     failed("nxdomain", injected=True, first_answers=[], later_answers=["157.240.1.1"],
            first_rcode="NXDOMAIN", later_rcode="NOERROR"), None, ("blocked", "dns.nxdomain")),
    ("nxdomain, baseline resolves",
     failed("nxdomain"), BaselineDns(frozenset({"157.240.1.1"}), None),
     ("blocked", "dns.nxdomain")),
    ("nxdomain, cross-check nxdomain too",
     failed("nxdomain", crosscheck_answers=[], crosscheck_rcode="NXDOMAIN"), None,
     ("inconclusive", "target.down")),
    ("nxdomain, baseline nxdomain too",
     failed("nxdomain"), BaselineDns(frozenset(), "nxdomain"), ("inconclusive", "target.down")),
    ("nxdomain, nothing to compare with",
     failed("nxdomain"), None, ("blocked", "dns.nxdomain")),
    ("nxdomain, the cross-check failed",
     failed("nxdomain", crosscheck_failure="timeout", crosscheck_error="no DoH answer"), None,
     ("blocked", "dns.nxdomain")),
    ("silent resolver", failed("timeout", error="no reply within 5 s"), None,
     ("blocked", "dns.timeout")),
    ("refused", failed("refused"), None, ("blocked", "dns.refused")),
    ("ICMP port unreachable", failed("port_unreachable"), None, ("blocked", "dns.refused")),
    ("servfail", failed("servfail", crosscheck_answers=["157.240.1.1"]), None,
     ("blocked", "dns.servfail")),
    ("servfail for everyone", failed("servfail", crosscheck_rcode="SERVFAIL"), None,
     ("inconclusive", "target.down")),
    ("answers agree", phase(answers=["157.240.1.1"], crosscheck_answers=["157.240.1.1"]), None,
     OK),
    ("answers overlap", phase(answers=["157.240.1.1", "157.240.1.2"],
                              crosscheck_answers=["157.240.1.2", "157.240.1.9"]), None, OK),
    ("private answer the cross-check agrees with (a lab)",
     phase(answers=["10.1.2.3"], crosscheck_answers=["10.1.2.3"]), None, OK),
    ("private answer the baseline agrees with",
     phase(answers=["10.1.2.3"]), BaselineDns(frozenset({"10.1.2.3"}), None), OK),
    ("disjoint, certificate valid (a CDN)",
     phase(answers=["157.240.9.9"], crosscheck_answers=["157.240.1.1"],
           cert_valid_for_name=True), None, OK),
    ("disjoint private, certificate valid (split horizon)",
     phase(answers=["10.1.2.3"], crosscheck_answers=["157.240.1.1"],
           cert_valid_for_name=True), None, OK),
    ("disjoint private, no valid certificate",
     phase(answers=["10.10.34.34"], crosscheck_answers=["157.240.1.1"],
           cert_valid_for_name=False, cert_failure="timeout"), None, ("blocked", "dns.bogon")),
    ("disjoint loopback, no valid certificate",
     phase(answers=["127.0.0.66"], crosscheck_answers=["127.0.0.5"],
           cert_valid_for_name=False, cert_failure="connection_refused"), None,
     ("blocked", "dns.bogon")),
    ("disjoint public, no valid certificate",
     phase(answers=["93.184.216.34"], crosscheck_answers=["157.240.1.1"],
           cert_valid_for_name=False, cert_failure="hostname_mismatch"), None,
     ("blocked", "dns.mismatch")),
    ("injected: forged first, genuine later, no cross-check",
     phase(answers=["93.184.216.34"], injected=True, first_answers=["93.184.216.34"],
           later_answers=["157.240.1.1"], cert_valid_for_name=False), None,
     ("blocked", "dns.mismatch")),
    ("disjoint IPv6 answer on a host without IPv6: cannot judge",
     phase(answers=["2a03:2880::9"], crosscheck_answers=["2a03:2880::1"],
           cert_valid_for_name=False, cert_failure="network_unreachable"), None, OK),
    ("forged A behind a genuine AAAA",
     phase(answers=["10.10.34.34", "2a03:2880::1"],
           crosscheck_answers=["157.240.1.1", "2a03:2880::1"], cert_valid_for_name=False),
     None, ("blocked", "dns.bogon")),
    ("disjoint from the baseline only, certificate never checked",
     phase(answers=["157.240.9.9"]), BaselineDns(frozenset({"157.240.1.1"}), None), OK),
    ("private answer for a public name, nothing to compare with",
     phase(answers=["10.10.34.34"], cert_valid_for_name=False), None, ("blocked", "dns.bogon")),
    ("private answer for a public name that serves a valid certificate",
     phase(answers=["10.1.2.3"], cert_valid_for_name=True), None, OK),
    ("private answer for a private name",
     phase(name="printer.lan", answers=["192.168.1.9"]), None, OK),
    ("public answer, nothing to compare with", phase(answers=["157.240.1.1"]), None, OK),
]


@pytest.mark.parametrize(("case", "facts", "baseline", "expected"), CASES,
                         ids=[c[0] for c in CASES])
def test_judge_phase(case: str, facts: DnsFacts, baseline: BaselineDns | None,
                     expected: tuple[str, ...]) -> None:
    verdict = judge_phase(facts, baseline)
    if expected == OK:
        assert verdict is None
    else:
        assert verdict is not None
        assert (verdict.status, verdict.reason) == expected
        assert NAME in verdict.detail or "printer" in verdict.detail


def test_public_answer_that_works_without_tls_on_443_is_not_a_mismatch() -> None:
    """tcp://g.whatsapp.net:5222 from a different CDN edge: the chat port connects, port 443
    shows no certificate. Only a wrong certificate is evidence then."""
    silent_443 = phase(answers=["157.240.9.9"], crosscheck_answers=["157.240.1.1"],
                       cert_valid_for_name=False, cert_failure="timeout")
    assert judge_phase(silent_443, reached=True) is None
    assert sr(judge_phase(silent_443, reached=False)) == ("blocked", "dns.mismatch")
    wrong = phase(answers=["157.240.9.9"], crosscheck_answers=["157.240.1.1"],
                  cert_valid_for_name=False, cert_failure="hostname_mismatch")
    assert sr(judge_phase(wrong, reached=True)) == ("blocked", "dns.mismatch")
    private = phase(answers=["10.10.34.34"], crosscheck_answers=["157.240.1.1"],
                    cert_valid_for_name=False, cert_failure="timeout")
    assert sr(judge_phase(private, reached=True)) == ("blocked", "dns.bogon")
    verdict = judge(Observation(samples=[sample(silent_443, ok_after=True)]))
    assert verdict is None


def test_detail_names_the_injection_and_the_certificate() -> None:
    verdict = judge_phase(phase(
        answers=["127.0.0.66"], injected=True, first_answers=["127.0.0.66"],
        later_answers=["127.0.0.5"], crosscheck_answers=["127.0.0.5"],
        cert_valid_for_name=False, cert_error="connection refused", cert_port=443))
    assert verdict is not None
    assert "injection" in verdict.detail and "127.0.0.66:443" in verdict.detail
    assert "connection refused" in verdict.detail


def test_unconfirmed_nxdomain_says_why() -> None:
    verdict = judge_phase(failed("nxdomain"))
    assert verdict is not None and "not confirmed" in verdict.detail and "settings.doh" in verdict.detail


def sample(dns_phase: DnsFacts, ok_after: bool = True) -> Sample:
    s = Sample(phases={"dns": dns_phase})
    if dns_phase.ok:
        s.add(TcpFacts(ok=ok_after, failure=None if ok_after else "timeout"))
    return s


def test_judge_takes_the_commonest_verdict_over_samples() -> None:
    lying = phase(answers=["10.10.34.34"], crosscheck_answers=["157.240.1.1"],
                  cert_valid_for_name=False)
    observation = Observation(samples=[sample(lying, False), sample(lying, False),
                                       sample(failed("timeout"))])
    assert sr(judge(observation)) == ("blocked", "dns.bogon")


def test_judge_degraded_when_other_samples_went_through() -> None:
    lying = phase(answers=["10.10.34.34"], crosscheck_answers=["157.240.1.1"],
                  cert_valid_for_name=False)
    honest = phase(answers=["157.240.1.1"], crosscheck_answers=["157.240.1.1"])
    verdict = judge(Observation(samples=[sample(lying, False), sample(honest)]))
    assert verdict is not None
    assert (verdict.status, verdict.reason) == ("degraded", "dns.bogon") and "1 of 2 samples" in verdict.detail


def test_judge_none_without_dns_phase_or_complaint() -> None:
    assert judge(Observation(samples=[Sample(phases={"tcp": TcpFacts(ok=False)})])) is None
    honest = phase(answers=["157.240.1.1"], crosscheck_answers=["157.240.1.1"])
    assert judge(Observation(samples=[sample(honest, ok_after=False)])) is None


def test_judge_uses_the_baseline_target() -> None:
    base_phase = phase(answers=["157.240.1.1"])
    baseline = TargetResult(platform="wa", feature="web", url=f"dns://{NAME}", status="ok",
                            reason="ok", observation=Observation(samples=[sample(base_phase)]))
    now = Observation(samples=[Sample(phases={"dns": failed("nxdomain")})])
    verdict = judge(now, baseline)
    assert verdict is not None and "baseline resolves it to 157.240.1.1" in verdict.detail
    assert C.baseline_dns(baseline) == BaselineDns(frozenset({"157.240.1.1"}), None)


def test_note_when_answers_were_not_cross_checked() -> None:
    unchecked = Observation(samples=[sample(phase(answers=["157.240.1.1"]))])
    assert "not cross-checked" in (C.note(unchecked) or "")
    checked = Observation(samples=[sample(phase(answers=["1.1.1.1"],
                                                crosscheck_answers=["1.1.1.1"]))])
    assert C.note(checked) is None


def test_unreachable_ipv4_sinkhole_is_a_bogon_but_no_ipv6_is_not_judged() -> None:
    sinkhole = DnsFacts(ok=True, name="web.example.org", resolver="configured",
                     answers=["10.10.34.34"], crosscheck_answers=["198.51.100.7"],
                     cert_valid_for_name=False, cert_failure="network_unreachable")
    verdict = judge_phase(sinkhole)
    assert verdict is not None and (verdict.status, verdict.reason) == ("blocked", "dns.bogon")
    no_ipv6 = DnsFacts(ok=True, name="web.example.org", resolver="configured",
                    answers=["2001:db8::7"], crosscheck_answers=["2001:db8::8"],
                    cert_valid_for_name=False, cert_failure="network_unreachable")
    assert judge_phase(no_ipv6) is None
