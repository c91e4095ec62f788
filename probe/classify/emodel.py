"""How a call would sound: an ITU-T G.107 E-model estimate (R factor, MOS) from delay, jitter, loss.

VoIP monitors judge a call without listening to it: they feed the network's delay, jitter and
loss to the E-model and report its rating R (0-100) and a mean opinion score (MOS, 1-4.5). This
module does the same for a call-like flow (probe/wire/flow.py), the way those monitors simplify
the model for a VoIP path:

    R   = 93.2 - Id - Ie,eff                                  (G.107 section 7.1, A = 0)

93.2 is G.107's R when every parameter has its default value (Table 3): a clean narrowband
connection whose terminals cancel echo; only the impairments the network adds are subtracted.

    Id  = 0.024 d + 0.11 (d - 177.3) H(d - 177.3)             delay impairment
    d   = RTT / 2 + 2 J + codec delay                        one-way (mouth-to-ear) delay, ms

Id is Cole and Rosenbluth's fit of G.107's delay terms (Idd, Idte, Idle) at the default echo
values ("Voice over IP performance monitoring", ACM SIGCOMM CCR 31(2), 2001), the form VoIP
monitors use; H is the step function. The network part of d is half the round trip (an echo
measures both directions). Jitter enters through the receiver's jitter buffer, taken as twice
the RFC 3550 interarrival jitter J (the usual rule of VoIP monitors: the buffer must absorb
about twice the mean deviation); the codec adds its frame (20 ms of packetization).

    Ie,eff = Ie + (95 - Ie) Ppl / (Ppl / BurstR + Bpl)         G.107 section 7.6, (7-29)

Ppl is the packet loss in percent, late packets counted as lost (a late packet is a lost one
to the listener). BurstR is G.107's burst ratio, 1 for random loss and more for loss in
bursts: the mean observed burst length over the one random loss would give, i.e. for G.107's
two-state Markov model 1 / (p + q) = mean burst length x (1 - Ppl/100). Ie and Bpl are the
codec's: G.711 with packet-loss concealment (G.711 Appendix I), Ie = 0 and Bpl = 25.1 (ITU-T
G.113 Appendix I, Tables I.1 and I.3). It is the codec whose values the ITU publishes and that
VoIP monitors assume by default; WhatsApp and Telegram use Opus, which has no G.113 entry: its
FEC and concealment make it at least as robust as G.711 with PLC at moderate loss, so the
estimate errs towards a better-sounding call, not a worse one.

    MOS = 1 + 0.035 R + R (R - 60)(100 - R) 7e-6 for 0 < R < 100; 1 below, 4.5 above
                                                            (G.107 Annex B, (B-4))

With every default, R = 93.2 and MOS = 4.41: a perfect narrowband call.

Poor: R < 60, i.e. MOS < 3.1 (POOR_R). G.109 (Table 1) and G.107 Annex B (Table B.1) grade R:
90 best, 80 high, 70 medium ("some users dissatisfied"), 60 low ("many users dissatisfied"),
below 60 poor ("nearly all users dissatisfied"; below 50 G.109 advises against using the
connection at all). 60 is far from the R of an ordinary path (1 % random loss and a 100 ms round
trip give R = 87.9, a 600 ms satellite round trip 68.5), so only a path that really degrades
calls crosses it: 20 % random loss does (R = 50), 10 % does not (R = 65).

Limits: this is an estimate from transport figures, not a listening test. The flow echoes STUN
requests, not media: a real call's codec, FEC, jitter buffer and packet size differ. RTT/2
assumes a symmetric path, and the jitter is the round trip's, so the buffer is sized a little
large. The R scale is the narrowband one (wideband calls are rated up to 129 by G.107.1). Loss
that a server causes (a rate limiter) rates as badly as a censor's: the classifier must tell
them apart (baseline, steadiness of the answer rate), not this model.
"""

from __future__ import annotations

from dataclasses import dataclass

from probe.wire.flow import FlowStats

__all__ = [
    "G711_PLC",
    "MIN_CAUSE_R",
    "POOR_MOS",
    "POOR_R",
    "R_DEFAULT",
    "Cause",
    "Codec",
    "Quality",
    "burst_ratio",
    "delay_impairment",
    "estimate",
    "from_flow",
    "loss_impairment",
    "mos",
    "one_way_delay_ms",
]

R_DEFAULT = 93.2  # G.107: R with every parameter at its default value
POOR_R = 60.0  # below: G.109's "poor" category, nearly all users dissatisfied
MIN_CAUSE_R = 1.5  # a cause costing fewer R points (about 0.08 MOS near 3.1) is not named


@dataclass(frozen=True, slots=True)
class Codec:
    """A voice codec as the E-model sees it."""

    name: str
    ie: float  # equipment impairment factor, R points (G.113 Appendix I)
    bpl: float  # packet-loss robustness factor (G.113 Appendix I)
    delay_ms: float  # packetization and look-ahead it adds to the one-way delay


G711_PLC = Codec("G.711 with packet-loss concealment", ie=0.0, bpl=25.1, delay_ms=20.0)


def mos(r: float) -> float:
    """G.107 Annex B (B-4): the MOS (conversational quality, 1-4.5) for a rating R."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6


POOR_MOS = round(mos(POOR_R), 2)  # 3.1


def one_way_delay_ms(rtt_ms: float, jitter_ms: float, codec: Codec = G711_PLC) -> float:
    """Mouth-to-ear delay d: half the round trip, a jitter buffer of twice the jitter, the
    codec's own delay."""
    return rtt_ms / 2 + 2 * jitter_ms + codec.delay_ms


def delay_impairment(d_ms: float) -> float:
    """Id for a one-way delay of `d_ms` (Cole and Rosenbluth 2001, fitted to G.107)."""
    return 0.024 * d_ms + (0.11 * (d_ms - 177.3) if d_ms > 177.3 else 0.0)


def loss_impairment(loss: float, burst: float = 1.0, codec: Codec = G711_PLC) -> float:
    """Ie,eff (G.107 (7-29)) for a loss fraction (0-1) and burst ratio."""
    ppl = 100 * min(max(loss, 0.0), 1.0)
    return codec.ie + (95 - codec.ie) * ppl / (ppl / burst + codec.bpl)


def burst_ratio(loss: float, lost: int, bursts: int) -> float:
    """G.107's BurstR from a flow's counts: the mean burst length (lost / bursts) over the mean
    that random loss at the same rate gives (1 / (1 - loss)). At least 1: loss spread more
    evenly than random is rated as random (G.107 defines BurstR for bursty loss)."""
    if not lost or not bursts or loss >= 1:
        return 1.0
    return max(1.0, lost / bursts * (1 - loss))


@dataclass(frozen=True, slots=True)
class Cause:
    """One impairment, with what it costs."""

    what: str  # "loss", "jitter" or "delay"
    text: str  # for the report: "28 % loss", "41 ms jitter", "620 ms round trip"
    r_points: float  # how much of R it takes away


@dataclass(frozen=True, slots=True)
class Quality:
    """The estimate, and what it was made from."""

    r: float  # E-model rating, 0-100 (clamped)
    mos: float  # 1-4.5
    poor: bool  # r < POOR_R
    causes: tuple[Cause, ...]  # the impairments worth naming, the costliest first
    delay_ms: float  # the one-way delay d used
    loss: float  # the loss fraction used, late packets included
    burst_ratio: float
    codec: str

    def summary(self) -> str:
        """"MOS 2.4: 28 % loss, 41 ms jitter" (just "MOS 4.4" when nothing is worth naming)."""
        head = f"MOS {self.mos:.1f}"
        return f"{head}: {', '.join(c.text for c in self.causes)}" if self.causes else head


def _percent(loss: float) -> str:
    value = 100 * loss
    return f"{value:.0f}" if value >= 10 or value == round(value) else f"{value:.1f}"


def estimate(rtt_ms: float, jitter_ms: float, loss: float, burst: float = 1.0,
             codec: Codec = G711_PLC) -> Quality:
    """The E-model for a path with this round trip (ms), RFC 3550 jitter (ms), loss fraction
    (0-1, late packets included) and burst ratio."""
    base = rtt_ms / 2 + codec.delay_ms
    d = one_way_delay_ms(rtt_ms, jitter_ms, codec)
    # Id is not linear: the delay is charged first, the jitter buffer with what it adds on top.
    delay_cost = delay_impairment(base) - delay_impairment(codec.delay_ms)
    jitter_cost = delay_impairment(d) - delay_impairment(base)
    loss_cost = loss_impairment(loss, burst, codec)
    r = R_DEFAULT - delay_impairment(d) - loss_cost
    r = min(max(r, 0.0), 100.0)
    loss_text = f"{_percent(loss)} % loss" + (" in bursts" if burst >= 2 else "")
    causes = [
        Cause("loss", loss_text, loss_cost - codec.ie),
        Cause("jitter", f"{jitter_ms:.0f} ms jitter", jitter_cost),
        Cause("delay", f"{rtt_ms:.0f} ms round trip", delay_cost),
    ]
    named = sorted((c for c in causes if c.r_points >= MIN_CAUSE_R), key=lambda c: -c.r_points)
    return Quality(
        r=round(r, 2),
        mos=round(mos(r), 2),
        poor=r < POOR_R,
        causes=tuple(Cause(c.what, c.text, round(c.r_points, 2)) for c in named),
        delay_ms=round(d, 3),
        loss=loss,
        burst_ratio=round(burst, 3),
        codec=codec.name,
    )


def from_flow(stats: FlowStats, codec: Codec = G711_PLC) -> Quality | None:
    """The estimate for a call-like flow: median RTT, its jitter (0 with a single answer), its
    loss (late answers counted as lost) and the burst ratio of its loss runs. None when nothing
    was answered: there is no call to rate, only a path that carries nothing."""
    if not stats.answered or stats.rtt_p50_ms is None or stats.loss is None:
        return None
    burst = burst_ratio(stats.loss, stats.lost, stats.loss_bursts)
    return estimate(stats.rtt_p50_ms, stats.jitter_ms or 0.0, stats.loss, burst, codec)
