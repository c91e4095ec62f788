"""Observations: what happened on the wire, as typed facts only (no verdicts).

A target is measured `attempts` times; each time is a Sample, an ordered record of the layers it
went through (dns, tcp, tls, http, quic, stun, turn). Each layer records one frozen facts model
(`DnsFacts`, `TcpFacts`, ...) that shares four fields with every other: whether the layer worked
(`ok`), how long it took (`ms`), and on failure a failure fact from `failures.py` (`timeout`,
`connection_reset`, ...) with the words behind it (`error`, for `detail` only). Diagnosis steps
taken when every sample failed (the SNI swap, the version-negotiation ping, ...) are facts models
of their own, keyed by the step's name, apart from the samples.

Strategy: the model is chosen by its key (`FACTS`, `STEPS`) when a saved run is read, so the
classifier and the metrics read attributes that mypy checks, never string keys. A saved file is
written back as it was read: a facts model writes the four shared fields and the facts its
layer measured (a fact without a value is left out, not written as null); keys that no model
declares (written by a later version) are kept and written back. So `probe.run/1` files stay comparable across versions and
can be judged again later.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

# The four fields every facts model writes, even when unset (the shape result files always had).
_SHARED = ("ok", "ms", "failure", "error")


class Facts(BaseModel):
    """One layer of one sample (or one diagnosis step): ok or not, how long (ms), the failure."""

    model_config = ConfigDict(extra="allow", frozen=True)
    KEY: ClassVar[str] = ""  # the layer or step this model is read for
    # Fields that may hold text a server sent (and so our address, echoed): probe/scrub.py
    TEXT: ClassVar[tuple[str, ...]] = ("error",)

    ok: bool
    ms: float | None = None
    failure: str | None = None
    error: str | None = None  # the error as the OS or library worded it, for `detail` only

    def dump(self) -> dict[str, Any]:
        """The facts as written to a result file: the shared fields always, then the layer's
        own facts that have a value (a fact not measured, or empty, is absent, not null)."""
        out: dict[str, Any] = {"ok": self.ok, "ms": self.ms, "failure": self.failure,
                               "error": self.error}
        out.update(self.model_dump(mode="json", exclude_none=True, exclude_defaults=True))
        return out

    def scrubbed(self, scrub: Callable[[str | None], str | None]) -> Self:
        """These facts with every text field scrubbed (the same object when nothing changed)."""
        changed = {}
        for name in self.TEXT:
            value = getattr(self, name)
            if isinstance(value, str) and (clean := scrub(value)) != value:
                changed[name] = clean
        return self.model_copy(update=changed) if changed else self

    def summary(self) -> dict[str, Any]:
        """The facts without the empty ones: the per-target summary of a result file."""
        return {k: v for k, v in self.dump().items() if v is not None}


F = TypeVar("F", bound=Facts)

# --- the layers -------------------------------------------------------------------------------


class DnsFacts(Facts):
    """What the resolver said (and the cross-checks: DoH, a second reply, a certificate)."""

    KEY: ClassVar[str] = "dns"
    TEXT: ClassVar[tuple[str, ...]] = ("error", "crosscheck_error", "cert_error")

    name: str | None = None
    resolver: str | None = None  # "system" or "configured"
    resolver_address: str | None = None  # a configured resolver only: the user's own setting
    literal: bool | None = None  # the target is an IP literal: nothing was asked
    answers: list[str] = []
    rcode: str | None = None
    ttl: int | None = None
    transport: str | None = None  # udp, or tcp after a truncated reply
    truncated: bool | None = None
    queries: int | None = None  # UDP queries sent per question (retransmissions included)
    a_failure: str | None = None  # one family failed while the other answered
    aaaa_failure: str | None = None
    # injection: a second, different reply to the same query
    injected: bool | None = None
    first_answers: list[str] | None = None
    later_answers: list[str] | None = None
    first_rcode: str | None = None
    later_rcode: str | None = None
    # the DoH cross-check
    crosscheck_answers: list[str] | None = None
    crosscheck_rcode: str | None = None
    crosscheck_ms: float | None = None
    crosscheck_failure: str | None = None
    crosscheck_error: str | None = None
    # the certificate check of an answer nothing else vouched for
    cert_address: str | None = None
    cert_port: int | None = None
    cert_valid_for_name: bool | None = None
    cert_failure: str | None = None
    cert_error: str | None = None
    cert_ms: float | None = None


class TcpFacts(Facts):
    """A TCP connect: where to, and the kernel's RTT estimate (TCP_INFO)."""

    KEY: ClassVar[str] = "tcp"

    address: str | None = None
    port: int | None = None
    rtt_ms: float | None = None


class TlsFacts(Facts):
    """A TLS handshake: what was asked and what came back, byte by byte."""

    KEY: ClassVar[str] = "tls"
    TEXT: ClassVar[tuple[str, ...]] = ("error", "subject", "issuer")

    sni: str | None = None
    version: str | None = None
    cipher: str | None = None
    alpn: str | None = None
    subject: str | None = None
    issuer: str | None = None
    spki_sha256: str | None = None
    server_bytes: int | None = None  # raw bytes from the server before the failure
    first_record: str | None = None  # what its first byte said: handshake, alert, 0x..


class HttpFacts(Facts):
    """One GET: status, bytes and how fast they came."""

    KEY: ClassVar[str] = "http"
    TEXT: ClassVar[tuple[str, ...]] = ("error", "location_host")

    status: int | None = None
    http_version: str | None = None
    location_host: str | None = None  # a redirect's target host (never the whole URL)
    bytes: int | None = None  # body bytes
    ttfb_ms: float | None = None
    transfer_ms: float | None = None
    throughput: int | None = None  # bit/s over the transfer
    capped: bool | None = None  # stopped at the byte cap
    truncated: bool | None = None  # still moving when the transfer window closed


class QuicFacts(Facts):
    """A QUIC handshake: how far it got, and how it ended."""

    KEY: ClassVar[str] = "quic"
    TEXT: ClassVar[tuple[str, ...]] = ("error", "reason")

    server_packet: bool | None = None  # a packet of the server's was decrypted
    datagrams: int | None = None
    ms_first_packet: float | None = None
    alpn: str | None = None
    version: str | None = None
    closed_by: str | None = None  # peer or local
    error_code: int | None = None
    error_name: str | None = None
    reason: str | None = None  # the close's reason phrase (scrubbed)
    frame_type: int | None = None
    alpn_refused: bool | None = None


class ExchangeFacts(Facts):
    """A train of STUN requests on one UDP flow (stun; turn's call-like flow too): what came
    back, when, and how the answers are spread. Call-like flows add the fields below `pattern`."""

    port: int | None = None
    sent: int | None = None
    answered: int | None = None
    lost: int | None = None
    loss: float | None = None
    late: int | None = None
    duplicates: int | None = None
    malformed: int | None = None
    icmp_errors: int | None = None
    error_responses: int | None = None
    error_code: int | None = None
    rtt_ms: list[float] | None = None  # per answer (short trains only)
    rtt_median_ms: float | None = None
    rtt_min_ms: float | None = None
    pattern: str | None = None  # + answered, L late, . nothing (a call flow: run-length)
    spacing_ms: float | None = None
    elapsed_ms: float | None = None
    answered_until_ms: float | None = None  # the last answer, ms into the exchange
    silent_from_ms: float | None = None  # the first request of the silent tail
    mapped_address_returned: bool | None = None
    mapped_address: str | None = None  # the user's public address: only with --include-ip
    nat: bool | None = None
    # A call-like flow (probe/wire/flow.py: FlowStats says what each means)
    call: bool | None = None  # the exchange was a call-like flow
    rate: float | None = None  # requests per second
    size: int | None = None  # bytes of UDP payload per request
    rtt_p90_ms: float | None = None
    rtt_p99_ms: float | None = None
    rtt_max_ms: float | None = None
    jitter_ms: float | None = None  # RFC 3550 interarrival jitter of the round trips
    loss_bursts: int | None = None
    max_burst: int | None = None
    bytes_sent: int | None = None
    bytes_received: int | None = None
    silent_after_packets: int | None = None  # requests sent up to the last answer
    silent_after_bytes: int | None = None
    silent_after_bytes_received: int | None = None
    silent_after_s: float | None = None
    answered_per_s: list[int] | None = None
    ended: str | None = None  # complete, silence, icmp
    # After a cut-off, a fresh flow (a new source port) to the same address and port
    fresh_flow_sent: int | None = None
    fresh_flow_answered: int | None = None


class StunFacts(ExchangeFacts):
    KEY: ClassVar[str] = "stun"


class ReflectFacts(ExchangeFacts):
    """A call-like flow of probe-echo datagrams to a `probe reflect` server, in one shape, and
    what the reflector counted of it (asked afterwards on a fresh flow of the same session)."""

    KEY: ClassVar[str] = "reflect"

    shape: str | None = None  # stun, whatsapp, telegram, rtp, random
    reflector_received: int | None = None  # of our requests, how many reached the reflector
    reflector_answered: int | None = None  # how many it answered
    direction: str | None = None  # a cut-off's: "up" (ours stopped arriving) or "down"


class TransferFacts(Facts):
    """Over a TLS connection to a `probe reflect` server: TOTAL bytes down, then up, in small
    then large records, and what the reflector counted; a freeze shows in one direction."""

    KEY: ClassVar[str] = "transfer"

    chunks: list[int] | None = None  # record sizes, in the order used
    total: int | None = None  # bytes asked each way, per record size
    down: int | None = None  # bytes received of the downloads
    up: int | None = None  # of our uploads, the bytes the reflector counted
    direction: str | None = None  # a stall's: "down" or "up"
    refused: bool | None = None  # the reflector's own limits said no: not the network's doing


class TurnFacts(ExchangeFacts):
    """An unauthenticated TURN Allocate: a 401 with REALM and NONCE is a TURN server."""

    KEY: ClassVar[str] = "turn"
    TEXT: ClassVar[tuple[str, ...]] = ("error", "software")

    transport: str | None = None  # udp or tcp
    realm: bool | None = None
    nonce: bool | None = None
    software: str | None = None  # the server's SOFTWARE, scrubbed


class DnsFallback(Facts):
    """After every sample failed at DNS: the target measured at the address the baseline's
    resolver gave for the name, as `address:` would (is the name blocked, or the service?)."""

    KEY: ClassVar[str] = "dns_fallback"

    address: str | None = None
    failed_layer: str | None = None  # the layer that failed at that address, if one did


class DeadlineFacts(Facts):
    """The engine's safety deadline for a sample (or the diagnosis) passed."""

    KEY: ClassVar[str] = "deadline"


class NotBuiltFacts(Facts):
    """A scheme whose layer this build does not have."""

    KEY: ClassVar[str] = "not_built"


# --- diagnosis steps --------------------------------------------------------------------------


class SniControl(TlsFacts):
    """The same address and port with a harmless SNI, taken before the samples."""

    KEY: ClassVar[str] = "sni_control"

    reply: str | None = None  # server_hello, alert, handshake: what reached us
    before_samples: bool | None = None


class QuicControl(QuicFacts):
    """A QUIC handshake with a harmless SNI to the same address and port, before the samples."""

    KEY: ClassVar[str] = "quic_control"

    sni: str | None = None
    before_samples: bool | None = None


class VersionPing(Facts):
    """A QUIC packet of a reserved version (no ClientHello): a Version Negotiation answer?"""

    KEY: ClassVar[str] = "version_negotiation"

    version_sent: str | None = None
    datagrams: int | None = None
    versions: list[str] | None = None


class OtherAddresses(Facts):
    """Other addresses of the same name, tried after every connect timed out."""

    KEY: ClassVar[str] = "other_addresses"

    tried: list[str] = []
    connected: list[str] = []


class PresentedCertificate(Facts):
    """The certificate the server presents, read without verifying it."""

    KEY: ClassVar[str] = "certificate"
    TEXT: ClassVar[tuple[str, ...]] = ("error", "subject", "issuer")

    subject: str | None = None
    issuer: str | None = None
    spki_sha256: str | None = None


def _registry(*models: type[Facts]) -> dict[str, type[Facts]]:
    return {m.KEY: m for m in models}


FACTS = _registry(DnsFacts, TcpFacts, TlsFacts, HttpFacts, QuicFacts, StunFacts, TurnFacts,
                  ReflectFacts, TransferFacts, DeadlineFacts, NotBuiltFacts)
STEPS = _registry(SniControl, QuicControl, VersionPing, OtherAddresses, PresentedCertificate,
                  DnsFallback, DeadlineFacts)


def _typed(value: Any, models: dict[str, type[Facts]]) -> Any:
    """Saved facts (plain mappings) as the model their key names; models pass through."""
    if not isinstance(value, dict):
        return value
    return {key: facts if isinstance(facts, Facts) else
            models.get(key, Facts).model_validate(facts) for key, facts in value.items()}


class Sample(BaseModel):
    """One attempt at a target: its layers' facts in the order they ran."""

    # default_factory, not `= {}`: pydantic deep-copies a mutable default on every model,
    # which showed in profiles of big runs (one Sample per attempt, one Observation per target).
    phases: dict[str, Facts] = Field(default_factory=dict)
    at_ms: float | None = None  # when the sample began, ms after the run began

    @field_validator("phases", mode="before")
    @classmethod
    def _typed_phases(cls, value: Any) -> Any:
        return _typed(value, FACTS)

    @field_serializer("phases")
    def _dump_phases(self, phases: dict[str, Facts]) -> dict[str, dict[str, Any]]:
        return {key: facts.dump() for key, facts in phases.items()}

    def add(self, facts: F) -> F:
        """Record a layer's facts under its key; returns them."""
        self.phases[facts.KEY] = facts
        return facts

    def get(self, model: type[F]) -> F | None:
        """The facts of one layer, typed, or None when the sample did not get there."""
        facts = self.phases.get(model.KEY)
        return facts if isinstance(facts, model) else None

    def scrubbed(self, scrub: Callable[[str | None], str | None]) -> Sample:
        """This sample with every layer's text fields scrubbed (itself when nothing changed)."""
        phases = {k: f.scrubbed(scrub) for k, f in self.phases.items()}
        if all(phases[k] is f for k, f in self.phases.items()):
            return self
        return Sample(phases=phases, at_ms=self.at_ms)

    @property
    def ok(self) -> bool:
        return bool(self.phases) and all(p.ok for p in self.phases.values())

    @property
    def failed(self) -> tuple[str, Facts] | None:
        """The first layer that failed, with its facts."""
        for layer, facts in self.phases.items():
            if not facts.ok:
                return layer, facts
        return None


class Observation(BaseModel):
    """Everything measured for one target: its samples and any diagnosis steps."""

    samples: list[Sample] = Field(default_factory=list)
    diagnosis: dict[str, Facts] = Field(default_factory=dict)
    interrupted: bool = False

    @field_validator("diagnosis", mode="before")
    @classmethod
    def _typed_steps(cls, value: Any) -> Any:
        return _typed(value, STEPS)

    @field_serializer("diagnosis")
    def _dump_steps(self, steps: dict[str, Facts]) -> dict[str, dict[str, Any]]:
        return {key: facts.dump() for key, facts in steps.items()}

    def step(self, model: type[F]) -> F | None:
        """A diagnosis step's facts, typed, or None when it was not taken."""
        facts = self.diagnosis.get(model.KEY)
        return facts if isinstance(facts, model) else None
