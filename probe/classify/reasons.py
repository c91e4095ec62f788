"""The one table from (layer, failure fact) to reason code, and each code's status.

Every reason a verdict names comes from here or from a rule that refines it (a diagnosis
step, a quality check); CONTRACT.md §4 and the README's table document them all, and
tests/unit/test_failures.py checks that every fact maps to a documented code.
"""

from __future__ import annotations

import re

from probe import failures as F
from probe.observations import DnsFacts, Facts, HttpFacts, Sample, TcpFacts
from probe.results import Status
from probe.thresholds import Thresholds

# (layer, failure fact) -> reason code. A layer's `*` row is its default.
REASONS: dict[tuple[str, str], str] = {
    ("dns", F.NXDOMAIN): "dns.nxdomain",
    ("dns", F.NO_ANSWER): "dns.nxdomain",
    ("dns", F.TIMEOUT): "dns.timeout",
    ("dns", F.REFUSED): "dns.refused",
    ("dns", F.PORT_UNREACHABLE): "dns.refused",  # ICMP port unreachable: nothing serves DNS
    ("dns", F.CONNECTION_REFUSED): "dns.refused",
    ("dns", F.HOST_UNREACHABLE): "dns.unreachable",
    ("dns", F.NETWORK_UNREACHABLE): "dns.unreachable",
    ("dns", F.SERVFAIL): "dns.servfail",
    ("dns", "*"): "dns.servfail",
    ("tcp", F.TIMEOUT): "tcp.timeout",
    ("tcp", F.CONNECTION_REFUSED): "tcp.reset",
    ("tcp", F.CONNECTION_RESET): "tcp.reset",
    ("tcp", F.HOST_UNREACHABLE): "tcp.unreachable",
    ("tcp", F.NETWORK_UNREACHABLE): "tcp.unreachable",
    ("tcp", F.ADDRESS_UNAVAILABLE): "tcp.unreachable",
    ("tcp", "*"): "tcp.reset",
    ("tls", F.TIMEOUT): "tls.timeout",
    ("tls", F.CONNECTION_RESET): "tls.reset",
    ("tls", F.CONNECTION_REFUSED): "tls.reset",
    ("tls", F.EOF_): "tls.eof",
    ("tls", F.UNTRUSTED_CERTIFICATE): "tls.untrusted",
    ("tls", F.HOSTNAME_MISMATCH): "tls.hostname",
    ("tls", F.MALFORMED_CERTIFICATE): "tls.untrusted",
    ("tls", F.TLS_ALERT): "tls.alert",
    ("tls", "*"): "tls.alert",
    ("http", F.TIMEOUT): "http.timeout",
    ("http", F.CONNECTION_RESET): "http.reset",
    ("http", F.EOF_): "http.reset",
    ("http", F.STALL): "http.stall",
    ("transfer", F.STALL): "http.stall",  # a TLS transfer to a reflector, frozen
    ("transfer", "*"): "http.reset",
    ("http", F.HTTP_STATUS): "http.status",
    ("http", "*"): "http.reset",
    ("quic", F.TIMEOUT): "quic.timeout",
    ("quic", F.PEER_CLOSED): "quic.closed",
    ("quic", F.UNTRUSTED_CERTIFICATE): "tls.untrusted",
    ("quic", F.HOSTNAME_MISMATCH): "tls.hostname",
    ("quic", F.PORT_UNREACHABLE): "udp.unreachable",
    ("quic", F.HOST_UNREACHABLE): "udp.unreachable",
    ("quic", F.NETWORK_UNREACHABLE): "udp.unreachable",
    ("quic", F.CONNECTION_REFUSED): "udp.unreachable",
    ("quic", F.ALPN_REFUSED): "quic.closed",
    ("quic", F.TLS_ALERT): "tls.alert",
    ("quic", "*"): "quic.closed",
    ("stun", F.TIMEOUT): "udp.timeout",
    ("stun", F.PORT_UNREACHABLE): "udp.unreachable",
    ("stun", F.HOST_UNREACHABLE): "udp.unreachable",
    ("stun", F.NETWORK_UNREACHABLE): "udp.unreachable",
    ("stun", F.CUTOFF): "udp.cutoff",
    ("stun", "*"): "udp.timeout",
    ("reflect", F.TIMEOUT): "udp.timeout",
    ("reflect", F.PORT_UNREACHABLE): "udp.unreachable",
    ("reflect", F.HOST_UNREACHABLE): "udp.unreachable",
    ("reflect", F.NETWORK_UNREACHABLE): "udp.unreachable",
    ("reflect", F.CUTOFF): "udp.cutoff",
    ("reflect", "*"): "udp.timeout",
    ("turn", F.TIMEOUT): "udp.timeout",
    ("turn", F.PORT_UNREACHABLE): "udp.unreachable",
    ("turn", F.CONNECTION_REFUSED): "tcp.reset",
    ("turn", F.CONNECTION_RESET): "tcp.reset",
    ("turn", F.EOF_): "tcp.reset",  # over TCP: closed after the Allocate, before any answer
    ("turn", F.HOST_UNREACHABLE): "udp.unreachable",
    ("turn", F.NETWORK_UNREACHABLE): "udp.unreachable",
    ("turn", F.PROTOCOL_ERROR): "turn.unexpected",  # a STUN answer, but not TURN's 401
    ("turn", F.CUTOFF): "udp.cutoff",
    ("turn", "*"): "udp.timeout",
    ("deadline", "*"): "target.timeout",
}

# Failures that say the layer or the host cannot be tested here, not that anything is blocked.
UNTESTABLE = frozenset({F.NOT_IMPLEMENTED, F.ADDRESS_UNAVAILABLE, F.LOCAL_LIMIT})

# Codes that are not `blocked`; every other code is.
STATUS_OF_REASON: dict[str, Status] = {
    "ok": "ok",
    "http.throttled": "degraded",
    "udp.loss": "degraded",
    "call.poor": "degraded",
    "latency.high": "degraded",
    "partial": "degraded",
    "network.allowlist": "degraded",
    "network.down": "inconclusive",
    "network.captive": "inconclusive",
    "target.down": "inconclusive",
    "target.untestable": "inconclusive",
    "target.interrupted": "inconclusive",
}

# Codes that refine a layer's reason (diagnosis steps, run-level rules) or judge quality: with
# REASONS' values and STATUS_OF_REASON's keys, every code a verdict can name.
REFINED = frozenset({"tls.sni_filtered", "quic.sni_filtered", "udp.stun_filtered",
                     "http.throttled", "latency.high", "udp.loss", "call.poor"})


def status_of(reason: str) -> Status:
    return STATUS_OF_REASON.get(reason, "blocked")


def reason_of(layer: str, failure: str | None) -> str:
    """The reason code for a layer that failed with a failure fact."""
    if failure in UNTESTABLE:
        return "target.untestable"
    failure = failure or F.UNKNOWN
    return REASONS.get((layer, failure)) or REASONS.get((layer, "*")) or f"{layer}.failed"


def address_of(sample: Sample, facts: Facts) -> str | None:
    """The address a sample talked to: the failed layer's own, else the first dns answer."""
    if isinstance(facts, TcpFacts) and facts.address:
        return facts.address
    dns = sample.get(DnsFacts)
    return dns.answers[0] if dns is not None and dns.answers else None


def no_local_ipv6(sample: Sample, facts: Facts, th: Thresholds) -> bool:
    """'Network unreachable' to an IPv6 address, answered by our own kernel at once: this host
    has no IPv6 route. Not blocking (CENSORSHIP.md, look-alikes)."""
    address = address_of(sample, facts)
    return (facts.failure == F.NETWORK_UNREACHABLE and address is not None and ":" in address
            and facts.ms is not None and facts.ms <= th.local_failure_ms)


def sample_reason(sample: Sample, th: Thresholds) -> str:
    """The reason one sample failed with ('ok' when it worked)."""
    failed = sample.failed
    if failed is None:
        return "ok"
    layer, facts = failed
    if no_local_ipv6(sample, facts, th):
        return "target.untestable"
    return reason_of(layer, facts.failure)


# A duration already in a layer's message ("no answer to SYN within 5 s"): one timing per fact.
_TIMED = re.compile(r"\b\d+(?:\.\d+)? ?(?:ms|s)\b")


def describe(layer: str, facts: Facts) -> str:
    """One line of facts about a failed layer, for `detail`: its message, and how long it took
    unless the message says so already."""
    what = facts.error or facts.failure or "failed"
    took = f" after {facts.ms:.0f} ms" if facts.ms is not None and not _TIMED.search(what) \
        else ""
    if (isinstance(facts, HttpFacts) and facts.failure == F.STALL and facts.bytes is not None
            and str(facts.bytes) not in what):
        what += f" ({facts.bytes} bytes arrived before the stall)"
    return f"{layer}: {what}{took}"
