"""Every threshold the verdicts use, in one documented place (the README links here).

The classifier (`probe/classify.py`) takes a `Thresholds` as an argument, so tests and
researchers can judge a saved run with other numbers; `DEFAULT` is what `probe run` uses.

How they are applied, per target that worked on every sample:

* RTT (`latency.high`, degraded). The RTT of a sample is the kernel's TCP RTT at connect
  (TCP_INFO), else the connect time; for QUIC the first server packet; for STUN the median
  request RTT. The target's RTT is the median over its samples. Against a baseline it is high
  when it is above `rtt_ratio` x the baseline's AND more than `rtt_margin_ms` above it (so 1 ms
  -> 3 ms on a LAN is not "degraded", and a satellite link's steady 600 ms on both runs is
  fine). Independently, above the target's `expect.max_rtt`. With neither a baseline RTT nor
  `expect.max_rtt`, above `max_rtt_ms`: a conservative ceiling that satellite links stay under.

* Throughput (`http.throttled`, degraded). A transfer's rate counts only when it lasted at
  least `min_transfer_ms` and at least `transfer_rtts` round trips: a body fetched in a few ms,
  or in one or two round trips, measures timers and slow start, not the link. The target's
  rate is the median of its measurable samples. Against a baseline it is throttled below
  `throttle_ratio` x the baseline's rate; a baseline transfer too short to measure counts only
  as the rate it would have had over `min_transfer_ms` (a lower bound: its true rate is at
  least that). Independently, below `expect.min_throughput`. With neither, below
  `min_throughput_bps` (the 2021-2024 Russian throttles ran at 128-150 kbit/s).

* Loss (`udp.loss`, degraded). Requests lost out of requests sent, summed over the STUN/TURN
  exchanges. A loss counts only when it is unlikely under an allowed loss rate p: the binomial
  tail P(X >= lost | sent, p) must be below `loss_alpha`. Against a baseline p is the
  baseline's loss, at least `max_loss`; independently p is `expect.max_loss` when given;
  with neither, `max_loss`. So 3 lost of 10 (p = 5 %: tail 1.2 %) is bad luck, 10 of 30 is not.

* Call quality (`call.poor`, degraded). A call-like flow (a `calls` target) that was answered
  is rated as VoIP monitors rate a call, with the ITU-T G.107 E-model (probe/classify/emodel.py
  says how, with its sources and limits): from the median RTT, the RFC 3550 jitter and the loss
  (late answers counted as lost) of the flow, an R factor and a MOS. Below `call_poor_r`
  (G.109's "poor": nearly all users dissatisfied; MOS 3.1) the call would sound poor; not when
  the baseline's flow was poor too (the path, not a censor). A server that answers a steady few
  requests a second and ignores the rest (`rate_limit_share` of the flow's rate or fewer, each
  second within `rate_limit_spread` of the median) is rate-limited, not lossy: ok, with a note.

* Failures. One failing sample out of several, with others working, is `degraded` with the
  count in `detail`, never `blocked`; `blocked` needs every sample to fail.
  A connect failing with "network unreachable" to an IPv6 address within `local_failure_ms`
  is this host having no IPv6 route (the kernel answered, not the network): untestable.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Thresholds:
    """The numbers behind `degraded` verdicts; see the module docstring for how each is used."""

    rtt_ratio: float = 2.0  # RTT above baseline x this...
    rtt_margin_ms: float = 50.0  # ...and above it by more than this
    max_rtt_ms: float = 1500.0  # no baseline and no expect.max_rtt

    throttle_ratio: float = 0.25  # throughput below baseline x this is throttling
    min_throughput_bps: float = 200_000.0  # no baseline and no expect.min_throughput
    min_transfer_ms: float = 200.0  # a shorter transfer measures no rate
    transfer_rtts: float = 4.0  # ...and so does one lasting fewer round trips than this

    max_loss: float = 0.05  # loss allowed when nothing else says; the floor against a baseline
    loss_alpha: float = 0.01  # how unlikely a loss must be under the allowed rate to count

    call_poor_r: float = 60.0  # E-model R below which a call would sound poor (MOS 3.1)
    rate_limit_share: float = 0.5  # answers a second at most this share of the rate...
    rate_limit_spread: float = 0.2  # ...each second within this share of the median (or 1)

    local_failure_ms: float = 5.0  # an unreachable-network error this fast came from the kernel


DEFAULT = Thresholds()
