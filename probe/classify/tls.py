"""TLS verdicts: the SNI swap, the residual (penalty-box) block, and the presented certificate.

The SNI control is a handshake with a harmless name to the same address and port, taken before
any sample (layers/tls.py), so a residual block a sample triggers cannot spoil it. A control
that reached the server while the target's handshakes were cut names SNI filtering. A censor
with a penalty box (CENSORSHIP.md: China 90-180 s) resets the first forbidden ClientHello and
then drops every packet of that client, address and port: the first sample fails at TLS, the
later ones at connect. Read alone, the later samples look like an IP block; read in order,
after a control that got through, they are the penalty of SNI filtering.
"""

from __future__ import annotations

from collections.abc import Sequence

from probe.classify.verdict import Finding, Verdict
from probe.observations import PresentedCertificate, Sample, SniControl, TlsFacts
from probe.results import TargetResult

SNI_SWAP_REASONS = ("tls.timeout", "tls.reset", "tls.eof", "tls.alert")
# After the first sample's cut: what a penalty box does to later connects.
PENALTY_REASONS = ("tcp.timeout", "tcp.reset")
_REPLIES = {"server_hello": "a ServerHello", "alert": "a TLS alert",
            "handshake": "a handshake record"}


def _ms(facts: SniControl | PresentedCertificate) -> str:
    return f" in {facts.ms:.0f} ms" if facts.ms is not None else ""


def is_residual(reasons: Sequence[str]) -> bool:
    """The samples' reasons, in the order taken, show a penalty box: the first cut at TLS,
    every later one silenced (or refused) at connect. One connect timeout among samples
    answered at TLS is not that (a lost SYN), and neither is a connect failing first."""
    return (len(reasons) >= 2 and reasons[0] in SNI_SWAP_REASONS
            and all(r in PENALTY_REASONS for r in reasons[1:]))


def _alerted(samples: Sequence[Sample]) -> bool:
    """Every handshake of the target that failed began with an alert from the server (a
    warning alert then FIN reads as EOF, yet the server did answer the name)."""
    failed = [f for s in samples if (f := s.get(TlsFacts)) is not None and not f.ok]
    return bool(failed) and all(f.first_record == "alert" for f in failed)


def sni_control(v: Verdict, step: SniControl, reasons: Sequence[str],
                samples: Sequence[Sample] = ()) -> Finding | None:
    """What the harmless-name handshake to the same address says of a failed target."""
    sni = step.sni or "a harmless name"
    residual = is_residual(reasons)
    if v.reason not in SNI_SWAP_REASONS and not residual:
        return None
    if step.ok and step.reply == "alert" and (v.reason == "tls.alert" or _alerted(samples)):
        return Finding(f"SNI control: the same address with SNI {sni} got an alert too: the "
                       f"server refuses both names, not a filter")
    if step.ok:
        reply = _REPLIES.get(step.reply or "", "an answer")
        text = f"SNI control: the same address with SNI {sni} got {reply}{_ms(step)}"
        if residual:
            text += (f"; after the first ClientHello ({reasons[0]}), every later connect to "
                     f"this address and port failed ({', '.join(reasons[1:])}): a residual "
                     f"block, the censor's penalty for the name")
        return Finding(text, "blocked", "tls.sni_filtered",
                       "another SNI to the same address is answered: the name is filtered, "
                       "not the address")
    return Finding(f"SNI control: the same address with SNI {sni} failed too "
                   f"({step.error or step.failure}): the address or port is blocked, or the "
                   f"server is down")


def baseline_certificate(target: TargetResult | None) -> TlsFacts | None:
    """The certificate facts of a baseline target's first working sample."""
    if target is None:
        return None
    sample = next((s for s in target.observation.samples if s.ok), None)
    tls = sample.get(TlsFacts) if sample is not None else None
    return tls if tls is not None and tls.issuer else None


def presented_certificate(v: Verdict, step: PresentedCertificate,
                          base: TargetResult | None) -> Finding | None:
    if v.reason not in ("tls.untrusted", "tls.hostname"):
        return None
    if not step.ok:
        return Finding(f"reading the presented certificate failed ({step.error or step.failure})")
    text = f"the server presented a certificate issued by {step.issuer or '?'}"
    if step.subject:
        text += f" for {step.subject}"
    was = baseline_certificate(base)
    if was is not None:
        text += f"; the baseline's was issued by {was.issuer}"
    return Finding(text)


def certificate_change(now: TlsFacts | None, base: TargetResult | None) -> str | None:
    """A note when a trusted certificate's issuer or key changed since the baseline."""
    was = baseline_certificate(base)
    if now is None or was is None or not now.issuer:
        return None
    if now.issuer == was.issuer and now.spki_sha256 == was.spki_sha256:
        return None
    changed = "issuer" if now.issuer != was.issuer else "key"
    return (f"certificate {changed} changed since the baseline (issuer {now.issuer}, was "
            f"{was.issuer}); trusted, so not interception (platforms rotate CAs)")
