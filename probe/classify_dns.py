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

import ipaddress
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from probe import failures as F
from probe.catalog import Job
from probe.observations import Observation, Phase
from probe.results import Run, Status, TargetResult

Verdict = tuple[Status, str, str]  # (status, reason code, detail)

# Names under these suffixes are private by design (RFC 6761, RFC 8375, common LAN habits): a
# private answer for them is expected, never a bogon.
PRIVATE_SUFFIXES = (
    "test", "example", "invalid", "localhost", "local", "lan", "home", "internal", "intranet",
    "corp", "private", "home.arpa",
)

# Failure facts of a resolver that did not give an answer at all -> reason code.
_SILENCE: dict[str, str] = {
    F.TIMEOUT: "dns.timeout",
    F.REFUSED: "dns.refused",
    F.PORT_UNREACHABLE: "dns.refused",  # ICMP port unreachable: nothing serves DNS there
    F.CONNECTION_REFUSED: "dns.refused",
    F.SERVFAIL: "dns.servfail",
}


def is_bogon(address: str) -> bool:
    """True for an address no public server can have: private, loopback, link-local, shared,
    documentation, multicast, unspecified or otherwise reserved."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True  # not an address at all
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def is_public_name(name: str) -> bool:
    """A name that should resolve to a public address (has a dot, no private suffix)."""
    name = name.rstrip(".").lower()
    if "." not in name:
        return False
    return not any(name == s or name.endswith("." + s) for s in PRIVATE_SUFFIXES)


def _family(address: str) -> int:
    return 6 if ":" in address else 4


def shares_address(answers: Iterable[str], references: Iterable[str]) -> bool:
    """Do the answers share an address with the references, in the family of the first answer
    (the one an application connects to)? A forged A record must not hide behind a genuine
    AAAA one; references of the other family only are compared as they are."""
    answers, references = list(answers), set(references)
    if not answers:
        return False
    family = _family(answers[0])
    mine = {a for a in answers if _family(a) == family}
    theirs = {r for r in references if _family(r) == family} or references
    return bool(mine & theirs)


@dataclass(frozen=True)
class BaselineDns:
    """What the baseline's resolver said for the same target: its answers, or that it failed."""

    answers: frozenset[str]
    failure: str | None


def baseline_dns(target: TargetResult | None) -> BaselineDns | None:
    """The baseline's dns facts for a target, from its samples (or its phase summary)."""
    if target is None:
        return None
    phases = [s.phases["dns"] for s in target.observation.samples if "dns" in s.phases]
    if not phases and "dns" in target.phases:
        phases = [Phase.model_validate(target.phases["dns"])]
    if not phases:
        return None
    answers = frozenset(a for p in phases for a in _answers(p))
    failures = [p.failure for p in phases if p.failure]
    return BaselineDns(answers, None if answers or not failures else failures[0])


def _answers(phase: Phase) -> list[str]:
    return list(phase.get("answers") or [])


def _join(addresses: Iterable[str]) -> str:
    return ", ".join(addresses) or "nothing"


def _untestable_here(phase: Phase, address: str) -> bool:
    """The certificate check failed because this host cannot reach that address family at all
    (no IPv6), not because of the address. An IPv4 sinkhole that is unreachable (Iran's
    10.10.34.34 has no route from most networks) is evidence, not an untestable case."""
    failure = phase.get("cert_failure")
    return failure == F.ADDRESS_UNAVAILABLE or (failure == F.NETWORK_UNREACHABLE and ":" in address)
# Certificate-check failures that showed a certificate, and a wrong one: positive evidence.
_WRONG_CERTIFICATE = (F.UNTRUSTED_CERTIFICATE, F.HOSTNAME_MISMATCH)


def judge_phase(phase: Phase, baseline: BaselineDns | None = None,
                reached: bool = False) -> Verdict | None:
    """The verdict one `dns` phase calls for, or None when the name resolved acceptably.

    `reached`: a later layer of the same sample worked at the answered address (connected,
    answered STUN...). A public answer that does that and merely shows no certificate at all
    (no TLS on port 443: a chat port speaking its own protocol) is not called a mismatch.
    """
    name = phase.get("name") or "the name"
    who = f"resolver ({phase.get('resolver') or 'system'})"
    crosscheck = list(phase.get("crosscheck_answers") or [])
    later = list(phase.get("later_answers") or []) if phase.get("injected") else []
    base = sorted(baseline.answers) if baseline else []
    injection = _injection_note(phase)

    if phase.failure in (F.NXDOMAIN, F.NO_ANSWER):
        said = "NXDOMAIN" if phase.failure == F.NXDOMAIN else "no address"
        for label, refs in (("DoH cross-check", crosscheck), ("later reply", later),
                            ("baseline", base)):
            if refs:
                return ("blocked", "dns.nxdomain",
                        f"{who} says {said} for {name}; {label} resolves it to {_join(refs)}"
                        + injection)
        if phase.get("crosscheck_rcode") in ("NXDOMAIN", "NOERROR") or (
            baseline and baseline.failure in (F.NXDOMAIN, F.NO_ANSWER)
        ):
            return ("inconclusive", "target.down",
                    f"{who} says {said} for {name}, and so does the "
                    + ("DoH cross-check" if phase.get("crosscheck_rcode") else "baseline")
                    + ": the name is gone for everyone")
        return ("blocked", "dns.nxdomain",
                f"{who} says {said} for {name}; not confirmed: {_no_reference(phase)}")

    if phase.failure is not None:
        reason = _SILENCE.get(phase.failure, "dns.servfail")
        detail = f"{who} for {name}: {phase.error or phase.failure}"
        if phase.ms is not None:
            detail += f" after {phase.ms:.0f} ms"
        if reason == "dns.servfail" and phase.get("crosscheck_rcode") == "SERVFAIL":
            return ("inconclusive", "target.down",
                    f"{detail}; the DoH cross-check fails too: the name's servers are broken")
        if crosscheck:
            detail += f"; DoH cross-check resolves it to {_join(crosscheck)}"
        return ("blocked", reason, detail)

    answers = list(phase.get("first_answers") or _answers(phase))
    if not answers:
        return None
    references = set(crosscheck) | set(later) | set(base)
    if shares_address(answers, references):
        return None
    cert_valid = phase.get("cert_valid_for_name")
    if cert_valid:
        return None  # a valid certificate for the name: CDN, split horizon or a lab
    used = answers[0]
    if not references:
        if not (is_bogon(used) and is_public_name(name)):
            return None  # nothing to compare with: see note()
        detail = (f"{who} answers {_join(answers)} for {name}, a private or reserved address "
                  f"for a public name{_cert_note(phase, used)}; not cross-checked: "
                  f"{_no_reference(phase)}")
        return ("blocked", "dns.bogon", detail)
    if cert_valid is None or _untestable_here(phase, used):
        return None  # disjoint, but the certificate was never checked: cannot judge
    kind = "dns.bogon" if is_bogon(used) else "dns.mismatch"
    if kind == "dns.mismatch" and reached and phase.get("cert_failure") not in _WRONG_CERTIFICATE:
        return None
    against = ("DoH cross-check" if crosscheck else "later reply" if later else "baseline")
    refs = crosscheck or later or base
    return ("blocked", kind,
            f"{who} answers {_join(answers)} for {name}, {against} {_join(refs)}: nothing in "
            f"common{_cert_note(phase, used)}" + injection)


def _cert_note(phase: Phase, address: str) -> str:
    if phase.get("cert_valid_for_name") is None:
        return ""
    port = phase.get("cert_port") or 443
    why = phase.get("cert_error") or phase.get("cert_failure") or "invalid"
    return f", and {address}:{port} serves no valid certificate for it ({why})"


def _injection_note(phase: Phase) -> str:
    if not phase.get("injected"):
        return ""
    first = phase.get("first_answers") or [phase.get("first_rcode") or "?"]
    later = phase.get("later_answers") or [phase.get("later_rcode") or "?"]
    return (f"; injection: two different replies to one query, first {_join(first)}, "
            f"then {_join(later)}")


def _no_reference(phase: Phase) -> str:
    error = phase.get("crosscheck_error")
    if error:
        return f"the DoH cross-check failed ({error}) and there is no baseline"
    return "no DoH cross-check (settings.doh) and no baseline"


def note(observation: Observation) -> str | None:
    """A remark for `detail` when answers could not be judged (nothing to compare them with)."""
    for sample in observation.samples:
        phase = sample.phases.get("dns")
        if phase is None or not phase.ok:
            continue
        if not phase.get("crosscheck_answers") and not phase.get("injected"):
            return "dns answers not cross-checked: " + _no_reference(phase)
    return None


def judge(observation: Observation, baseline_target: TargetResult | None = None) -> Verdict | None:
    """The dns verdict for a target's samples, or None when dns gives no reason to complain.

    The commonest verdict wins; when other samples went through fine, the target is degraded.
    """
    baseline = baseline_dns(baseline_target)
    verdicts: list[Verdict] = []
    fine = 0
    for sample in observation.samples:
        phase = sample.phases.get("dns")
        if phase is None:
            continue
        reached = any(p.ok for layer, p in sample.phases.items() if layer != "dns")
        verdict = judge_phase(phase, baseline, reached)
        if verdict is not None:
            verdicts.append(verdict)
        elif sample.ok:
            fine += 1
    if not verdicts:
        return None
    reason, _ = Counter(v[1] for v in verdicts).most_common(1)[0]
    status, _, detail = next(v for v in verdicts if v[1] == reason)
    total = len(verdicts) + fine
    if fine and status == "blocked":
        return ("degraded", reason, f"{len(verdicts)} of {total} samples: {detail}")
    if len(verdicts) > 1:
        detail += f"; {len(verdicts)} samples"
    return (status, reason, detail)


def find_target(baseline: Run | None, job: Job) -> TargetResult | None:
    """The same target in a baseline run (same platform, feature and URL), if it is there."""
    if baseline is None:
        return None
    everything = [*baseline.network.controls, *baseline.targets]
    return next((t for t in everything if (t.platform, t.feature, t.url)
                 == (job.platform, job.feature, job.target.url)), None)
