"""The numbers of a measured target: RTT, throughput and loss, from its samples' facts.

One place that reads them, shared by the classifier, `probe compare`, the reports (csv columns),
the history and the Prometheus metrics: every consumer means the same thing by "RTT". Facts
missing from a layer (an older result file, a layer that does not record them) give None.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from probe.observations import (
    DnsFacts,
    ExchangeFacts,
    Facts,
    HttpFacts,
    Observation,
    QuicFacts,
    ReflectFacts,
    Sample,
    StunFacts,
    TcpFacts,
    TurnFacts,
)
from probe.results import TargetResult

# Which layer stands for the round trip, best first: a TCP connect is one RTT (the kernel's
# estimate when recorded); a QUIC server's first packet about one; a STUN exchange one per
# request; a DNS answer only says how far the resolver is.
RTT_LAYERS: tuple[type[Facts], ...] = (TcpFacts, QuicFacts, StunFacts, ReflectFacts, TurnFacts,
                                       DnsFacts)
EXCHANGES: tuple[type[ExchangeFacts], ...] = (StunFacts, ReflectFacts, TurnFacts)


class Metrics(NamedTuple):
    """RTT median (ms), throughput median (bit/s), loss (fraction); None when not measured."""

    rtt_ms: float | None
    throughput_bps: float | None
    loss: float | None


@dataclass(frozen=True)
class Transfer:
    """One https sample's body transfer: its rate, how long it took and how many bytes."""

    rate_bps: float
    transfer_ms: float
    bytes: int


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def layer_rtt(facts: Facts) -> float | None:
    """The round trip a working layer measured, in ms."""
    if isinstance(facts, ExchangeFacts):
        if facts.rtt_median_ms is not None:
            return facts.rtt_median_ms
        return median(facts.rtt_ms or []) if facts.rtt_ms else facts.ms
    if isinstance(facts, TcpFacts) and facts.rtt_ms is not None:
        return facts.rtt_ms
    if isinstance(facts, QuicFacts) and facts.ms_first_packet is not None:
        return facts.ms_first_packet
    return facts.ms


def sample_rtt(sample: Sample) -> float | None:
    """The RTT of one sample, from its best working layer (RTT_LAYERS order). A resolver's
    answer counts only for a target that is a name alone (dns://): for any other, it says how
    far the resolver is, not the target, which may never have answered."""
    for model in RTT_LAYERS:
        facts = sample.get(model)
        if facts is not None and facts.ok:
            if isinstance(facts, DnsFacts) and len(sample.phases) > 1:
                return None
            return layer_rtt(facts)
    return None


def sample_transfer(sample: Sample) -> Transfer | None:
    """The body transfer of a working https sample, when it carried any bytes."""
    http = sample.get(HttpFacts)
    if http is None or not http.ok or not http.bytes:
        return None
    took = http.transfer_ms if http.transfer_ms is not None else http.ms
    rate = float(http.throughput) if http.throughput is not None else None
    if rate is None and took:
        rate = http.bytes * 8 / (took / 1000)
    if rate is None or took is None:
        return None
    return Transfer(rate_bps=rate, transfer_ms=took, bytes=http.bytes)


def udp_counts(samples: Iterable[Sample]) -> tuple[int, int]:
    """(requests sent, requests lost) summed over the STUN/TURN exchanges."""
    sent = lost = 0
    for sample in samples:
        for model in EXCHANGES:
            facts = sample.get(model)
            if facts is None or not facts.sent:
                continue
            if facts.lost is not None:
                gone = facts.lost
            elif facts.answered is not None:
                gone = facts.sent - facts.answered
            else:
                continue
            sent += facts.sent
            lost += gone
    return sent, lost


def observation_metrics(observation: Observation) -> Metrics:
    """Metrics of an observation: medians over working samples, loss over every exchange."""
    samples = observation.samples
    rtt = median(sample_rtt(s) for s in samples)
    rate = median(t.rate_bps for s in samples if (t := sample_transfer(s)) is not None)
    sent, lost = udp_counts(samples)
    loss = round(lost / sent, 4) if sent else None
    # rounded to what the clocks can tell (µs, bit/s): CSV cells stay readable
    return Metrics(None if rtt is None else round(rtt, 3),
                   None if rate is None else float(round(rate)), loss)


def metrics_of(target: TargetResult) -> Metrics:
    """(RTT median ms, throughput median bit/s, loss fraction) of a target, from its samples."""
    return observation_metrics(target.observation)
