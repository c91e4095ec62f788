"""DNS verdicts: from the facts of a `dns` phase (and a baseline's) to blocked, down, or fine.

Strategy: the dns layer records what each party said (the resolver's answers and rcode, a DoH
cross-check, a second reply to the same query, a certificate check on the answered address);
this module alone decides what that means. References are the addresses someone trustworthy gave
for the name: the cross-check, the later (genuine) reply of an injected pair, the baseline's
answers. An answer sharing any address with a reference is fine. An answer sharing none is fine
when its address serves a valid certificate for the name (CDNs, split-horizon DNS, labs);
otherwise it is `dns.bogon` (private or reserved address) or `dns.mismatch` (public address).
A refusal to answer is blocking only when a reference shows the name exists (CONTRACT.md §4).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from probe import failures as F
from probe.classify.reasons import reason_of
from probe.classify.verdict import Verdict, join
from probe.observations import DnsFacts, DnsFallback, Observation
from probe.results import TargetResult
from probe.wire.dns import is_bogon, is_public_name, shares_address


@dataclass(frozen=True)
class BaselineDns:
    """What the baseline's resolver said for the same target: its answers, or that it failed."""

    answers: frozenset[str]
    failure: str | None


def baseline_dns(target: TargetResult | None) -> BaselineDns | None:
    """The baseline's dns facts for a target, from its samples (or its phase summary)."""
    if target is None:
        return None
    phases = [d for s in target.observation.samples if (d := s.get(DnsFacts)) is not None]
    if not phases and "dns" in target.phases:
        phases = [DnsFacts.model_validate(target.phases["dns"])]
    if not phases:
        return None
    answers = frozenset(a for p in phases for a in p.answers)
    failures = [p.failure for p in phases if p.failure]
    return BaselineDns(answers, None if answers or not failures else failures[0])


def _join(addresses: Iterable[str]) -> str:
    return ", ".join(addresses) or "nothing"


def _untestable_here(facts: DnsFacts, address: str) -> bool:
    """The certificate check failed because this host cannot reach that address family at all
    (no IPv6), not because of the address. An IPv4 sinkhole that is unreachable (Iran's
    10.10.34.34 has no route from most networks) is evidence, not an untestable case."""
    failure = facts.cert_failure
    return failure == F.ADDRESS_UNAVAILABLE or (failure == F.NETWORK_UNREACHABLE and ":" in address)


# Certificate-check failures that showed a certificate, and a wrong one: positive evidence.
_WRONG_CERTIFICATE = (F.UNTRUSTED_CERTIFICATE, F.HOSTNAME_MISMATCH)


def judge_phase(facts: DnsFacts, baseline: BaselineDns | None = None,
                reached: bool = False) -> Verdict | None:
    """The verdict one `dns` phase calls for, or None when the name resolved acceptably.

    `reached`: a later layer of the same sample worked at the answered address (connected,
    answered STUN...). A public answer that does that and merely shows no certificate at all
    (no TLS on port 443: a chat port speaking its own protocol) is not called a mismatch.
    """
    name = facts.name or "the name"
    who = f"resolver ({facts.resolver or 'system'})"
    crosscheck = list(facts.crosscheck_answers or [])
    later = list(facts.later_answers or []) if facts.injected else []
    base = sorted(baseline.answers) if baseline else []
    injection = _injection_note(facts)

    if facts.failure in (F.NXDOMAIN, F.NO_ANSWER):
        said = "NXDOMAIN" if facts.failure == F.NXDOMAIN else "no address"
        for label, refs in (("DoH cross-check", crosscheck), ("later reply", later),
                            ("baseline", base)):
            if refs:
                return Verdict("blocked", "dns.nxdomain",
                               f"{who} says {said} for {name}; {label} resolves it to "
                               f"{_join(refs)}" + injection)
        if facts.crosscheck_rcode in ("NXDOMAIN", "NOERROR") or (
            baseline and baseline.failure in (F.NXDOMAIN, F.NO_ANSWER)
        ):
            return Verdict("inconclusive", "target.down",
                           f"{who} says {said} for {name}, and so does the "
                           + ("DoH cross-check" if facts.crosscheck_rcode else "baseline")
                           + ": the name is gone for everyone")
        return Verdict("blocked", "dns.nxdomain",
                       f"{who} says {said} for {name}; not confirmed: {_no_reference(facts)}")

    if facts.failure is not None:
        reason = reason_of("dns", facts.failure)
        detail = f"{who} for {name}: {facts.error or facts.failure}"
        if reason == "dns.servfail" and facts.crosscheck_rcode == "SERVFAIL":
            return Verdict("inconclusive", "target.down",
                           f"{detail}; the DoH cross-check fails too: the name's servers are "
                           "broken")
        if crosscheck:
            detail += f"; DoH cross-check resolves it to {_join(crosscheck)}"
        return Verdict("blocked" if reason != "target.untestable" else "inconclusive", reason,
                       detail)

    answers = list(facts.first_answers or facts.answers)
    if not answers:
        return None
    references = set(crosscheck) | set(later) | set(base)
    if shares_address(answers, references):
        return None
    if facts.cert_valid_for_name:
        return None  # a valid certificate for the name: CDN, split horizon or a lab
    used = answers[0]
    if not references:
        if not (is_bogon(used) and is_public_name(name)):
            return None  # nothing to compare with: see note()
        detail = (f"{who} answers {_join(answers)} for {name}, a private or reserved address "
                  f"for a public name{_cert_note(facts, used)}; not cross-checked: "
                  f"{_no_reference(facts)}")
        return Verdict("blocked", "dns.bogon", detail)
    if facts.cert_valid_for_name is None or _untestable_here(facts, used):
        return None  # disjoint, but the certificate was never checked: cannot judge
    kind = "dns.bogon" if is_bogon(used) else "dns.mismatch"
    if kind == "dns.mismatch" and reached and facts.cert_failure not in _WRONG_CERTIFICATE:
        return None
    against = ("DoH cross-check" if crosscheck else "later reply" if later else "baseline")
    refs = crosscheck or later or base
    return Verdict("blocked", kind,
                   f"{who} answers {_join(answers)} for {name}, {against} {_join(refs)}: "
                   f"nothing in common{_cert_note(facts, used)}" + injection)


def _cert_note(facts: DnsFacts, address: str) -> str:
    if facts.cert_valid_for_name is None:
        return ""
    port = facts.cert_port or 443
    why = facts.cert_error or facts.cert_failure or "invalid"
    return f", and {address}:{port} serves no valid certificate for it ({why})"


def _injection_note(facts: DnsFacts) -> str:
    if not facts.injected:
        return ""
    first = facts.first_answers or [facts.first_rcode or "?"]
    later = facts.later_answers or [facts.later_rcode or "?"]
    return (f"; injection: two different replies to one query, first {_join(first)}, "
            f"then {_join(later)}")


def _no_reference(facts: DnsFacts) -> str:
    if facts.crosscheck_error:
        return f"the DoH cross-check failed ({facts.crosscheck_error}) and there is no baseline"
    return "no DoH cross-check (settings.doh) and no baseline"


def note(observation: Observation) -> str | None:
    """A remark for `detail` when answers could not be judged (nothing to compare them with)."""
    for sample in observation.samples:
        facts = sample.get(DnsFacts)
        if facts is None or not facts.ok or facts.literal:
            continue
        if not facts.crosscheck_answers and not facts.injected:
            return "dns answers not cross-checked: " + _no_reference(facts)
    return None


def judge(observation: Observation, baseline_target: TargetResult | None = None
          ) -> Verdict | None:
    """The dns verdict for a target's samples, or None when dns gives no reason to complain.

    The commonest verdict wins; when other samples went through fine, the target is degraded.
    """
    baseline = baseline_dns(baseline_target)
    verdicts: list[Verdict] = []
    fine = 0
    for sample in observation.samples:
        facts = sample.get(DnsFacts)
        if facts is None:
            continue
        reached = any(p.ok for layer, p in sample.phases.items() if layer != "dns")
        verdict = judge_phase(facts, baseline, reached)
        if verdict is not None:
            verdicts.append(verdict)
        elif sample.ok:
            fine += 1
    if not verdicts:
        return None
    reason, _ = Counter(v.reason for v in verdicts).most_common(1)[0]
    first = next(v for v in verdicts if v.reason == reason)
    total = len(verdicts) + fine
    if fine and first.status == "blocked":
        return Verdict("degraded", reason, f"{len(verdicts)} of {total} samples: {first.detail}")
    if len(verdicts) > 1:
        return Verdict(first.status, reason, f"{first.detail}; {len(verdicts)} samples")
    return first


def with_fallback(verdict: Verdict, step: DnsFallback | None) -> Verdict:
    """A DNS-blocked target in the light of its baseline address, tried after the lookups
    failed: working there, only the name is blocked (clients that know the address, as call
    relays and hard-coded servers are known, get through: degraded, not blocked); failing
    there too, the service is unreachable from here, not only its name."""
    if step is None or verdict.status != "blocked" or not verdict.reason.startswith("dns."):
        return verdict
    if step.ok:
        return Verdict("degraded", verdict.reason, join(
            verdict.detail, f"the address the baseline resolved it to ({step.address}) works: "
                            f"only the name is blocked"))
    failed = reason_of(step.failed_layer or "dns", step.failure)
    return Verdict(verdict.status, verdict.reason, join(
        verdict.detail, f"the address the baseline resolved it to ({step.address}) fails too "
                        f"({failed}): the service is unreachable from here, not only its name"))
