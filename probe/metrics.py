"""The numbers of a measured target: RTT, throughput and loss, from its samples' facts.

One place that reads them, shared by the classifier, `probe compare`, the reports (csv columns)
and the history: every consumer means the same thing by "RTT". Facts missing from a phase
(an older result file, a layer that does not record them) give None, never an error.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from probe.observations import Observation, Phase, Sample
from probe.results import TargetResult

# Which phase stands for the round trip, best first: a TCP connect is one RTT (the kernel's
# estimate when recorded); a QUIC server's first packet about one; a STUN exchange one per
# request; a DNS answer only says how far the resolver is.
RTT_LAYERS = ("tcp", "quic", "stun", "turn", "dns")
LOSS_LAYERS = ("stun", "turn")


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


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def phase_rtt(layer: str, phase: Phase) -> float | None:
    """The round trip a working phase measured, in ms."""
    rtt = phase.get("rtt_median_ms") if layer in LOSS_LAYERS else None
    if rtt is None:
        rtt = phase.get("rtt_ms")
    if isinstance(rtt, list):
        return median(number(v) for v in rtt)
    if number(rtt) is not None:
        return number(rtt)
    if layer == "quic" and number(phase.get("ms_first_packet")) is not None:
        return number(phase.get("ms_first_packet"))
    return phase.ms


def sample_rtt(sample: Sample) -> float | None:
    """The RTT of one sample, from its best working phase (RTT_LAYERS order)."""
    for layer in RTT_LAYERS:
        phase = sample.phases.get(layer)
        if phase is not None and phase.ok:
            return phase_rtt(layer, phase)
    return None


def sample_transfer(sample: Sample) -> Transfer | None:
    """The body transfer of a working https sample, when it carried any bytes."""
    http = sample.phases.get("http")
    if http is None or not http.ok:
        return None
    size = number(http.get("bytes"))
    took = number(http.get("transfer_ms"))
    if took is None:
        took = http.ms
    rate = number(http.get("throughput_bps"))
    if rate is None:
        rate = number(http.get("throughput"))
    if rate is None and size and took:
        rate = size * 8 / (took / 1000)
    if rate is None or not size or took is None:
        return None
    return Transfer(rate_bps=rate, transfer_ms=took, bytes=int(size))


def udp_counts(samples: Iterable[Sample]) -> tuple[int, int]:
    """(requests sent, requests lost) summed over the STUN/TURN exchanges."""
    sent = lost = 0
    for sample in samples:
        for layer in LOSS_LAYERS:
            phase = sample.phases.get(layer)
            s = number(phase.get("sent")) if phase is not None else None
            if phase is None or not s:
                continue
            lo = number(phase.get("lost"))
            if lo is None:
                received = number(phase.get("answered"))
                if received is None:
                    received = number(phase.get("received"))
                if received is None:
                    continue
                lo = s - received
            sent += int(s)
            lost += int(lo)
    return sent, lost


def observation_metrics(observation: Observation) -> Metrics:
    """Metrics of an observation: medians over working samples, loss over every exchange."""
    samples = observation.samples
    rtt = median(sample_rtt(s) for s in samples)
    transfers = [t for t in (sample_transfer(s) for s in samples) if t is not None]
    rate = median(t.rate_bps for t in transfers)
    sent, lost = udp_counts(samples)
    loss = round(lost / sent, 4) if sent else None
    # rounded to what the clocks can tell (µs, bit/s): CSV cells stay readable
    return Metrics(None if rtt is None else round(rtt, 3),
                   None if rate is None else float(round(rate)), loss)


def metrics_of(target: TargetResult) -> Metrics:
    """(RTT median ms, throughput median bit/s, loss fraction) of a target, from its samples."""
    return observation_metrics(target.observation)
