"""The network, judged from the controls: down, behind a captive portal, allowlisted, or fine;
and what that means for the targets.

Controls are targets expected to work from anywhere. Every control failing is the network
being down, not a censor; a portal answering for every name (one address for all, certificate
errors, redirects to itself) is a captive network; foreign controls dead while domestic ones
work is an allowlist. Down or captive, no target can be judged: under a captive portal even a
target that "worked" reached the portal, not the platform.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from probe import failures as F
from probe.classify.quality import redirect_of
from probe.observations import DnsFacts
from probe.results import NetworkResult, Status, TargetResult

# Network verdicts under which a target tells nothing about censorship.
BLINDING = ("network.down", "network.captive")
CERTIFICATE_FAILURES = (F.UNTRUSTED_CERTIFICATE, F.HOSTNAME_MISMATCH)


def portal_signs(target: TargetResult) -> list[str]:
    """Signs of a captive portal in one control's samples: certificate errors, redirects to
    another site."""
    host = urlsplit(target.url).hostname or ""
    signs: list[str] = []
    for sample in target.observation.samples:
        failed = sample.failed
        if failed is not None and failed[1].failure in CERTIFICATE_FAILURES:
            signs.append(f"{target.url}: {failed[1].error or failed[1].failure}")
        moved = redirect_of(sample, host)
        if moved is not None:
            signs.append(f"{target.url} redirects to {moved[1]}")
    return list(dict.fromkeys(signs))


def one_address(controls: Iterable[TargetResult]) -> str | None:
    """The single address every name resolved to, when at least two names did (a portal's
    DNS answering everything with itself); None otherwise."""
    answers: dict[str, set[str]] = {}
    for c in controls:
        for sample in c.observation.samples:
            dns = sample.get(DnsFacts)
            if dns is None or dns.literal or not dns.answers:
                continue
            answers.setdefault(dns.name or c.url, set()).update(dns.answers)
    everything = set().union(*answers.values()) if answers else set()
    return next(iter(everything)) if len(answers) >= 2 and len(everything) == 1 else None


def outage_until(controls: Sequence[TargetResult]) -> float | None:
    """When a network-wide outage at the start of the run ended (ms into the run): every
    control sample taken before then failed, and every one taken after it worked. None when
    the controls show no such outage (or their samples carry no times: older files)."""
    timed = [(s.at_ms, s.ok) for c in controls if c.status != "inconclusive"
             for s in c.observation.samples if s.at_ms is not None]
    failed = [at for at, ok in timed if not ok]
    worked = [at for at, ok in timed if ok]
    if not failed or not worked or max(failed) >= min(worked):
        return None
    # each control must have failed: one control's bad luck is no network-wide outage
    if any(all(s.ok for s in c.observation.samples) for c in controls
           if c.status != "inconclusive"):
        return None
    return min(worked)


def judge_network(controls: Sequence[TargetResult]) -> NetworkResult:
    """Down when every control failed; captive when a portal answers; an allowlist when only
    domestic controls work. Controls that cannot be tested here count neither way."""
    def result(status: Status, reason: str, detail: str) -> NetworkResult:
        outage = outage_until(controls) if status == "ok" else None
        if outage is not None:
            detail += (f"; every control failed in the first {outage / 1000:.1f} s of the run, "
                       f"then worked: a short network-wide outage")
        return NetworkResult(status=status, reason=reason, detail=detail, controls=list(controls),
                             outage_until_ms=outage)

    if not controls:
        return result("ok", "ok", "no controls")
    counted = [c for c in controls if c.status != "inconclusive"]
    skipped = len(controls) - len(counted)
    skip = f"; {skipped} not testable here" if skipped else ""
    working = [c for c in counted if c.status in ("ok", "degraded")]
    signs = [s for c in controls for s in portal_signs(c)]
    clean = [c for c in working if not portal_signs(c)]
    single = one_address(controls)
    if not clean and (signs or (single and counted)):
        evidence = signs + ([f"every name resolves to {single}"] if single else [])
        return result("inconclusive", "network.captive",
                      "a captive portal answers: " + "; ".join(evidence[:4])
                      + "; log in to the network and run again")
    if not counted:
        return result("ok", "ok", f"no control could be tested here ({len(controls)} skipped)")
    if not working:
        reasons = Counter(c.reason for c in counted)
        listed = ", ".join(f"{r} x{n}" if n > 1 else r for r, n in reasons.items())
        return result("inconclusive", "network.down",
                      f"all {len(counted)} controls failed ({listed}){skip}")
    foreign = [c for c in counted if not c.domestic]
    if foreign and not any(not c.domestic for c in working):
        return result("degraded", "network.allowlist",
                      f"all {len(foreign)} foreign controls failed while {len(working)} "
                      f"domestic ones work: only domestic destinations are reachable (an "
                      f"allowlist); failing targets are blocked, not down{skip}")
    return result("ok", "ok", f"{len(working)} of {len(counted)} controls reachable{skip}")


def in_light_of(network: NetworkResult, target: TargetResult) -> TargetResult:
    """A target as the network lets it be judged: when the network is down a failing target
    is inconclusive (nothing can be blamed on a censor); behind a captive portal every target
    is, since what answered was the portal."""
    if network.reason not in BLINDING:
        return _in_the_outage(network, target)
    if network.reason == "network.down" and target.status == "ok":
        return target
    if target.status == "inconclusive" and target.reason == network.reason:
        return target
    detail = f"{target.reason}: {target.detail}" if target.detail else target.reason
    return target.model_copy(update={"status": "inconclusive", "reason": network.reason,
                                     "detail": detail})


def _in_the_outage(network: NetworkResult, target: TargetResult) -> TargetResult:
    """A target whose failed samples all fell in the outage at the start of the run says so:
    the network's failure, not a censor's. Degraded when its other samples worked; when it was
    measured only in the outage (a run with no network stops repeating failing samples, and
    the outage ended after), `inconclusive network.down`: nothing to blame on a censor."""
    until = network.outage_until_ms
    samples = target.observation.samples
    if until is None or target.status == "ok" or not samples:
        return target
    failed = [s.at_ms for s in samples if not s.ok]
    if not failed or any(at is None or at >= until for at in failed):
        return target
    if not any(s.ok for s in samples):
        detail = (f"{target.reason}: measured only in the network-wide outage at the start of "
                  f"the run (every control failed then too): the network's, not a censor's; "
                  f"{target.detail}")
        return target.model_copy(update={"status": "inconclusive", "reason": "network.down",
                                         "detail": detail})
    note = ("the failed samples fell in the network-wide outage at the start of the run "
            "(every control failed then too): the network's, not a censor's")
    return target.model_copy(update={"detail": f"{target.detail}; {note}"})


def apply_network(network: NetworkResult, targets: Iterable[TargetResult]) -> list[TargetResult]:
    """The targets in the light of the network (new results; the given ones are unchanged)."""
    return [in_light_of(network, t) for t in targets]
