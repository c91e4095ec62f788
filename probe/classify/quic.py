"""QUIC verdicts: filtered by name, or QUIC dropped wholesale.

Censors decrypt QUIC Initials (their keys derive from the Destination Connection ID) and drop
the ones naming a forbidden server (the GFW since 2024; Zohaib et al., USENIX Security 2025).
Two steps tell that from a censor dropping every QUIC v1 Initial: a QUIC handshake with a
harmless name to the same address, taken before the samples (`quic_control`), and a packet of a
reserved version, which carries no ClientHello (`version_negotiation`). The harmless name
completing names the filter; failing too while the version ping is answered, QUIC v1 itself is
dropped. Without a control (saved runs of an older version) the ping alone is read as before.
"""

from __future__ import annotations

from probe.classify.verdict import Finding, Verdict
from probe.observations import QuicControl, VersionPing


def _ms(facts: QuicControl | VersionPing) -> str:
    return f" in {facts.ms:.0f} ms" if facts.ms is not None else ""


def quic_control(v: Verdict, step: QuicControl) -> Finding | None:
    if v.reason != "quic.timeout":
        return None
    sni = step.sni or "a harmless name"
    if step.ok:
        return Finding(f"QUIC control: a handshake with SNI {sni} to the same address "
                       f"completed{_ms(step)}", "blocked", "quic.sni_filtered",
                       "a QUIC handshake with another name to the same address completes: the "
                       "name is filtered, not QUIC")
    return Finding(f"QUIC control: a handshake with SNI {sni} to the same address failed too "
                   f"({step.error or step.failure})")


def version_ping(v: Verdict, step: VersionPing, control: QuicControl | None) -> Finding | None:
    if v.reason != "quic.timeout":
        return None
    if step.ok:
        versions = f" (versions {', '.join(step.versions)})" if step.versions else ""
        text = f"version-negotiation ping without SNI answered{_ms(step)}{versions}"
        if control is None:  # no harmless-name handshake to tell the two apart: the old rule
            return Finding(text, "blocked", "quic.sni_filtered",
                           "QUIC without a ClientHello is answered: the handshake with this "
                           "name is filtered")
        if not control.ok:
            return Finding(text + ": QUIC packets without a ClientHello get through, QUIC v1 "
                                  "handshakes do not, whatever the name: QUIC v1 is dropped")
        return Finding(text)
    return Finding(f"version-negotiation ping unanswered too ({step.error or step.failure}): "
                   f"UDP to this address and port is dropped, or nothing listens")
