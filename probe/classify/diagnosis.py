"""Diagnosis steps: what each step taken after every sample failed says, and one fold of them.

A step rule reads its own typed facts and returns a Finding (words, and optionally a refined
status and reason) or None when it does not apply to the verdict. `refine` folds the findings
into a new verdict: the first refining finding names the reason, every finding is named in
`detail`, in the order the steps were taken.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

from probe.classify import quic, tls
from probe.classify.verdict import Finding, Verdict, join
from probe.observations import (
    DeadlineFacts,
    Observation,
    OtherAddresses,
    PresentedCertificate,
    QuicControl,
    SniControl,
    VersionPing,
)
from probe.results import TargetResult


def other_addresses(v: Verdict, step: OtherAddresses) -> Finding | None:
    if v.reason != "tcp.timeout":
        return None
    tried = ", ".join(step.tried) or "?"
    if step.ok:
        return Finding(f"other addresses of the name: {', '.join(step.connected)} connected "
                       f"(tried {tried}): this address is dropped, the service is up")
    return Finding(f"other addresses of the name: none connected (tried {tried})")


def findings(v: Verdict, observation: Observation, reasons: Sequence[str],
             base: TargetResult | None) -> list[Finding]:
    """Every step's finding, in the order the steps were taken."""
    found: list[Finding | None] = []
    control = observation.step(QuicControl)
    for step in observation.diagnosis.values():
        if isinstance(step, SniControl):
            found.append(tls.sni_control(v, step, reasons, observation.samples))
        elif isinstance(step, QuicControl):
            found.append(quic.quic_control(v, step))
        elif isinstance(step, VersionPing):
            found.append(quic.version_ping(v, step, control))
        elif isinstance(step, OtherAddresses):
            found.append(other_addresses(v, step))
        elif isinstance(step, PresentedCertificate):
            found.append(tls.presented_certificate(v, step, base))
        elif isinstance(step, DeadlineFacts):
            found.append(Finding("the diagnosis ran out of time"))
    return [f for f in found if f is not None]


def refine(v: Verdict, found: Sequence[Finding], reasons: Sequence[str],
           refine: bool = True) -> Verdict:
    """The verdict with the findings folded in. With `refine` False (the verdict is already
    decided: the baseline fails the same way) the findings are only listed."""
    texts = [f.text for f in found]
    better = next((f for f in found if f.reason is not None), None) if refine else None
    if better is None or better.reason == v.reason:
        return replace(v, detail=join(v.detail, *texts))
    assert better.reason is not None
    seen = Counter(reasons)
    how = (f"{v.reason} on every sample" if seen[v.reason] == len(reasons)
           else ", ".join(f"{r} x{n}" for r, n in seen.items()))
    head = f"{how}, but {better.conclusion or better.text}"
    return Verdict(better.status or v.status, better.reason, join(head, v.detail, *texts))
