"""Why a call fails: the run's STUN, QUIC, DNS and TCP results read together.

One silent STUN server says little; the run holds more (CENSORSHIP.md, "STUN classified on
any address", "encrypted UDP dropped"): the generic STUN controls, QUIC to other hosts, DNS over
UDP, TCP and TLS to the same addresses. So for each platform STUN/TURN target that got no
answer at all (`udp.timeout`):

* STUN unanswered everywhere, the generic STUN controls included, while QUIC or DNS over UDP
  is answered: the protocol is classified, not the addresses -> `udp.stun_filtered`;
* the generic STUN control answers: the platform's servers are targeted (and when TCP or TLS to
  the same address works, UDP to it is dropped, TCP is not);
* no UDP answered anywhere (no STUN, no QUIC) while TCP works: UDP is blocked on this network,
  only TCP relays can carry a call (and a `turn:...?transport=tcp` target that works says one
  does).

With a reflector of the research team's (settings.reflector) the same questions are measured,
not inferred: its flows send each datagram shape to each call port and to a control port of an
address nobody else uses, and the differences name the technique, said "measured against the
reflector" (reflector_findings). Those come first; the inference above fills in the rest.

Pure, like the rest of the package: it returns new results and changes none it is given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from probe.classify.verdict import join
from probe.observations import (
    DnsFacts,
    QuicControl,
    QuicFacts,
    ReflectFacts,
    StunFacts,
    TlsFacts,
    TransferFacts,
    TurnFacts,
    VersionPing,
)
from probe.results import TargetResult
from probe.wire.dns import is_address


def _scheme(t: TargetResult) -> str:
    return t.url.partition("://")[0].lower()


def is_stun(t: TargetResult) -> bool:
    """A STUN or TURN-over-UDP target (or control)."""
    return _scheme(t) == "stun" or (_scheme(t) == "turn" and "transport=tcp" not in t.url)


def stun_answered(t: TargetResult) -> bool:
    for sample in t.observation.samples:
        for facts in (sample.get(StunFacts), sample.get(TurnFacts)):
            if facts is not None and (facts.answered or facts.error_code is not None
                                      or facts.ok):
                return True
    return False


def quic_answered(t: TargetResult) -> bool:
    if _scheme(t) != "quic":
        return False
    for sample in t.observation.samples:
        quic = sample.get(QuicFacts)
        if quic is not None and (quic.ok or quic.server_packet):
            return True
    ping, control = t.observation.step(VersionPing), t.observation.step(QuicControl)
    return bool((ping is not None and ping.ok) or (control is not None and control.ok))


def dns_over_udp_answered(t: TargetResult) -> bool:
    for sample in t.observation.samples:
        dns = sample.get(DnsFacts)
        if dns is not None and dns.ok and not dns.literal and dns.transport == "udp":
            return True
    return False


def addresses(t: TargetResult) -> set[str]:
    """The addresses a target talked to: its literal host, or what its name resolved to."""
    host = t.url.partition("://")[2].split("/")[0].rsplit(":", 1)[0].strip("[]")
    found = {host} if is_address(host) else set()
    for sample in t.observation.samples:
        dns = sample.get(DnsFacts)
        if dns is not None and dns.answers:
            found.update(dns.answers)
    return found


@dataclass(frozen=True)
class _Udp:
    """What the run says about UDP as a whole."""

    stun_controls: list[TargetResult]
    stun_anywhere: bool
    quic: bool
    dns: bool
    tcp_works: list[TargetResult]

    @classmethod
    def of(cls, everything: Sequence[TargetResult]) -> _Udp:
        return cls(
            stun_controls=[c for c in everything if c.platform is None and is_stun(c)],
            stun_anywhere=any(is_stun(t) and stun_answered(t) for t in everything),
            quic=any(quic_answered(t) for t in everything),
            dns=any(dns_over_udp_answered(t) for t in everything),
            tcp_works=[t for t in everything if _scheme(t) in ("tcp", "tls", "https")
                       and t.ok_samples > 0],
        )


def _other_udp(udp: _Udp) -> str:
    said = [w for w, yes in (("QUIC", udp.quic), ("DNS over UDP", udp.dns)) if yes]
    return " and ".join(said) + (" are" if len(said) > 1 else " is")


def diagnose(controls: Sequence[TargetResult], targets: Sequence[TargetResult],
             reflector: Sequence[TargetResult] = ()) -> list[TargetResult]:
    """The targets, with every silent (or cut off) platform STUN/TURN target's verdict told by
    the rest of the run, and by the reflector's flows when there are some."""
    udp = _Udp.of([*controls, *targets, *reflector])
    measured = Reflected.of(reflector)
    out = []
    for t in targets:
        if measured is not None and t.platform is not None and is_stun(t):
            t = measured.explain(t)
        elif measured is not None and t.platform is not None and _scheme(t) in ("tls", "https"):
            t = measured.explain_name(t)
        if _silent_call_path(t) and "measured against the reflector" not in t.detail:
            t = _diagnosed(t, udp, targets)
        out.append(t)
    return out


def _silent_call_path(t: TargetResult) -> bool:
    return (t.platform is not None and is_stun(t) and t.status == "blocked"
            and t.reason == "udp.timeout")


# --- measured against a reflector --------------------------------------------------------------


def _port_shape(t: TargetResult) -> tuple[int, str]:
    rest = t.url.partition("://")[2]
    host_port, _, query = rest.partition("?")
    port = int(host_port.rsplit(":", 1)[1]) if ":" in host_port.rsplit("]", 1)[-1] else 3478
    shape = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("shape", "stun")
    return port, shape


def _port_of(t: TargetResult) -> int | None:
    host_port = t.url.partition("://")[2].split("/")[0].split("?")[0]
    tail = host_port.rsplit("]", 1)[-1]
    return int(tail.rsplit(":", 1)[1]) if ":" in tail else None


@dataclass(frozen=True)
class Reflected:
    """What the reflector's flows measured: per port and shape, answered, cut off or silent."""

    address: str
    flows: dict[tuple[int, str], TargetResult]
    control_ports: frozenset[int]
    names: dict[str, TargetResult]  # TLS handshakes with the reflector, by the name they sent

    @classmethod
    def of(cls, reflector: Sequence[TargetResult]) -> Reflected | None:
        udp = [t for t in reflector if "transport=tls" not in t.url]
        handshakes = [t for t in reflector if "transport=tls" in t.url]
        if not udp and not handshakes:
            return None
        flows = {_port_shape(t): t for t in udp}
        controls = frozenset(_port_shape(t)[0] for t in udp
                             if (t.name or "").startswith("reflector control"))
        address = reflector[0].url.partition("://")[2].split("?")[0].rsplit(":", 1)[0]
        names = {name: t for t in handshakes if (name := _sni(t)) is not None}
        return cls(address, flows, controls, names)

    def explain_name(self, t: TargetResult) -> TargetResult:
        """A platform's TLS target that failed, in the light of the same name sent to the
        reflector: cut there too, the name is filtered wherever it goes; passing there, what
        blocks the platform is its addresses, not the name."""
        name = _sni(t) or urlsplit(t.url).hostname or ""
        there = self.names.get(name)
        if t.status == "ok" or there is None:
            return t
        where = f"measured against the reflector at {self.address}"
        moved = _transfer(there)
        if there.reason == "tls.sni_filtered":
            words = (f"{where}: a handshake naming {name} is cut there too, while the harmless "
                     f"name passes: the name is filtered wherever it goes")
        elif there.reason == "http.stall" and moved is not None:
            words = (f"{where}: a transfer naming {name} froze there too ({moved.error}): the "
                     f"freeze follows the name wherever it goes")
        elif there.status == "ok":
            what = "a handshake" if moved is None else (
                f"a handshake and {(moved.total or 0) * len(moved.chunks or ()) // 1024} KiB "
                f"each way")
            words = (f"{where}: {what} naming {name} passes there: the name alone is not "
                     f"blocked; the block is tied to the platform's addresses")
        else:
            return t
        return t.model_copy(update={"detail": join(words, t.detail)})

    def finding(self, port: int | None) -> tuple[str | None, str] | None:
        """(a refined reason or None, words) for a call target on `port` (or any call port)."""
        where = f"measured against the reflector at {self.address}"
        answered = {key: bool(stun_answered(f) or _reflect_answered(f))
                    for key, f in self.flows.items()}
        if not answered:
            return None
        if not any(answered.values()):
            return None, (f"{where}: nothing answers on any port or shape: the reflector's "
                          f"address is blocked (or it is down): pick another reflector; "
                          f"nothing measured")
        call_ports = sorted({p for p, _ in self.flows} - self.control_ports)
        ports = [port] if port in call_ports else call_ports
        for p in ports:
            shapes = {shape: answered[(q, shape)] for q, shape in self.flows if q == p}
            cut = [f for (q, _), f in self.flows.items() if q == p and f.reason == "udp.cutoff"]
            if cut:
                return "udp.cutoff", f"{where}: {_cut_words(cut[0], p)}"
            if shapes.get("stun") is False and any(shapes.values()):
                passing = ", ".join(s for s, ok in shapes.items() if ok)
                return "udp.stun_filtered", (
                    f"{where}: STUN-shaped datagrams to port {p} are dropped while {passing} "
                    f"ones pass: the protocol is classified, not the address or the port")
            controls_ok = any(answered[(q, s)] for q, s in self.flows if q in self.control_ports)
            if shapes and not any(shapes.values()) and controls_ok:
                return None, (f"{where}: every datagram to UDP port {p} is dropped, whatever its "
                              f"shape, while the control port passes: the port is blocked")
        if port in call_ports and all(answered[(q, s)] for q, s in self.flows if q == port):
            return None, (f"{where}: every shape passes to port {port} on an address nobody "
                          f"else uses: the platform's servers are targeted")
        return None

    def explain(self, t: TargetResult) -> TargetResult:
        if t.status == "ok":
            return t
        found = self.finding(_port_of(t))
        if found is None:
            return t
        reason, words = found
        update: dict[str, str] = {"detail": join(words, t.detail)}
        if reason == "udp.stun_filtered" and t.reason == "udp.timeout":
            update["reason"] = reason
        return t.model_copy(update=update)


def _transfer(t: TargetResult) -> TransferFacts | None:
    return next((f for smp in t.observation.samples if (f := smp.get(TransferFacts)) is not None),
                None)


def _sni(t: TargetResult) -> str | None:
    """The name a TLS target sent (a reflector handshake's, from its name when it failed
    before the handshake)."""
    for sample in t.observation.samples:
        tls = sample.get(TlsFacts)
        if tls is not None and tls.sni:
            return tls.sni
    name = t.name or ""
    return name.removeprefix("reflector tls ") if name.startswith("reflector tls ") else None


def _reflect_answered(t: TargetResult) -> bool:
    for sample in t.observation.samples:
        facts = sample.get(ReflectFacts)
        if facts is not None and facts.answered:
            return True
    return False


def _cut_words(flow: TargetResult, port: int) -> str:
    for sample in flow.observation.samples:
        facts = sample.get(ReflectFacts)
        if facts is None or facts.silent_after_packets is None:
            continue
        way = {"up": "our packets stop reaching the reflector",
               "down": "the reflector's answers stop coming back"}.get(facts.direction or "")
        text = (f"flows to port {port} are frozen after {facts.silent_after_packets} requests "
                f"and {facts.answered or 0} answers")
        if facts.reflector_received is not None:
            text += f" (the reflector received {facts.reflector_received})"
        return text + (f": {way}" if way else "")
    return f"flows to port {port} are cut off"


def _diagnosed(t: TargetResult, udp: _Udp, targets: Iterable[TargetResult]) -> TargetResult:
    controls = ", ".join(c.url for c in udp.stun_controls)
    # DNS to the network's own resolver proves nothing about UDP leaving the network: other UDP
    # answered means QUIC to a host abroad (DNS over UDP is named too when it passes).
    if udp.stun_controls and not udp.stun_anywhere and udp.quic:
        words = (f"every STUN packet is dropped, whatever the server: the generic STUN "
                 f"controls ({controls}) are silent too, while {_other_udp(udp)} answered: "
                 f"the protocol is classified (VoIP blocking), not the addresses")
        return t.model_copy(update={"reason": "udp.stun_filtered",
                                    "detail": join(words, t.detail)})
    said: list[str] = []
    answering = [c for c in udp.stun_controls if stun_answered(c)]
    if answering:
        said.append(f"targeted: the generic STUN control ({answering[0].url}) answers")
        mine = addresses(t)
        same = [w for w in udp.tcp_works if w.platform is not None and addresses(w) & mine]
        if same:
            said.append(f"UDP to this address is dropped, TCP is not ({same[0].url} works)")
    elif not udp.stun_anywhere and not udp.quic and udp.tcp_works:
        said.append("UDP is blocked on this network; only TCP relays can carry a call"
                    + (" (DNS over UDP still passes)" if udp.dns else ""))
        relay = next((r for r in targets if r.platform == t.platform
                      and r.url.startswith("turn:") and "transport=tcp" in r.url
                      and r.status == "ok"), None)
        if relay is not None:
            said.append(f"a TCP relay works ({relay.url})")
    if not said:
        return t
    return t.model_copy(update={"detail": join(*said, t.detail)})


def feature_words(reason: str, members: Sequence[TargetResult]) -> str:
    """What a calls feature's verdict means, in words a volunteer understands."""
    if reason == "udp.stun_filtered":
        return "every STUN packet is dropped, whatever the server (VoIP classification)"
    if reason == "udp.cutoff":
        cut = [f.silent_after_packets + (f.answered or 0) for m in members
               for s in m.observation.samples if (f := s.get(StunFacts)) is not None
               and f.silent_after_packets is not None and m.reason == "udp.cutoff"]
        about = f" after about {min(cut)} packets" if cut else ""
        return f"calls connect, then go silent{about}"
    if reason == "call.poor":
        from probe.classify.udp import call_flow, quality

        scores = [q.mos for m in members if m.reason == "call.poor"
                  and (flow := call_flow(m.observation)) is not None
                  and (q := quality(flow)) is not None]
        return f"a call would sound poor (MOS {min(scores):.1f})" if scores else \
            "a call would sound poor"
    return ""
