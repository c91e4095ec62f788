"""UDP verdicts of STUN/TURN exchanges: loss against chance, a call's quality, a cut-off in words.

Loss counts only when it is unlikely under an allowed loss rate p: the binomial tail
P(X >= lost | sent, p) must be below `loss_alpha` (thresholds.py). Against a baseline p is the
baseline's loss, at least `max_loss`; independently p is `expect.max_loss`; with neither,
`max_loss`. So 3 lost of 10 at p = 5 % (a tail of 1.2 %) is bad luck, 10 of 30 is not.

A call-like flow is judged as a call: its E-model estimate (emodel.py) below `call_poor_r` is
`call.poor` unless the baseline's was poor too. A server that answers a steady few requests a
second and ignores the rest is rate-limited, not censored: its loss is neither `udp.loss` nor
`call.poor` (CENSORSHIP.md, look-alikes: a busy public STUN server).
"""

from __future__ import annotations

import math
import statistics

from probe.classify import emodel
from probe.classify.verdict import Finding, Subject
from probe.metrics import udp_counts
from probe.observations import ExchangeFacts, Observation, ReflectFacts, StunFacts
from probe.results import TargetResult
from probe.thresholds import Thresholds


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): how likely k or more losses are by chance."""
    if k <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    return min(1.0, sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)))


def chance_words(chance: float) -> str:
    """How likely a loss is by chance, in words a person reads."""
    if chance < 1e-6:
        return "less than one chance in a million by bad luck"
    return f"one chance in {round(1 / chance):,} by bad luck"


def call_flow(observation: Observation) -> ExchangeFacts | None:
    """The call-like flow of a target's first sample that ran one (stun, turn's relay, or a
    reflector's echo)."""
    for sample in observation.samples:
        for model in (StunFacts, ReflectFacts):
            facts = sample.get(model)
            if facts is not None and facts.call:
                return facts
    return None


def steady_rate(facts: ExchangeFacts, th: Thresholds) -> int | None:
    """The few answers a second a rate-limited server gives, steadily, to the end of the flow;
    None when the answers are not like that (a censor's loss is random or stops)."""
    seconds = facts.answered_per_s or []
    full = seconds[:-1] if len(seconds) > 1 else seconds  # the last second may be cut short
    if len(full) < 3 or not facts.rate or not seconds[-1]:
        return None
    middle = statistics.median(full)
    if middle < 1 or middle > th.rate_limit_share * facts.rate:
        return None
    spread = max(1.0, th.rate_limit_spread * middle)
    if any(abs(count - middle) > spread for count in full):
        return None
    return round(middle)


def rate_limited(observation: Observation, th: Thresholds) -> int | None:
    facts = call_flow(observation)
    return steady_rate(facts, th) if facts is not None else None


def quality(facts: ExchangeFacts) -> emodel.Quality | None:
    """How a call over this flow would sound; None when nothing was answered."""
    if not facts.answered or facts.rtt_median_ms is None or facts.loss is None:
        return None
    burst = emodel.burst_ratio(facts.loss, facts.lost or 0, facts.loss_bursts or 0)
    return emodel.estimate(facts.rtt_median_ms, facts.jitter_ms or 0.0, facts.loss, burst)


def call_quality(s: Subject, obs: Observation, base: TargetResult | None,
                 th: Thresholds) -> list[Finding]:
    """`call.poor` when a call over the flow would sound poor and the baseline's did not."""
    facts = call_flow(obs)
    if facts is None:
        return []
    limit = steady_rate(facts, th)
    if limit is not None:
        return [Finding(f"the server answers a steady {limit} requests a second and ignores "
                        f"the rest: a rate limit, not loss on the path")]
    now = quality(facts)
    if now is None:
        return []
    if now.r >= th.call_poor_r:
        return [Finding(f"a call would sound fine: {now.summary()}")]
    before_facts = call_flow(base.observation) if base is not None else None
    before = quality(before_facts) if before_facts is not None else None
    if before is not None and before.r < th.call_poor_r:
        return [Finding(f"a call would sound poor ({now.summary()}), as in the baseline "
                        f"({before.summary()}): the path, not a censor")]
    return [Finding(f"a call would sound poor: {now.summary()}", "degraded", "call.poor")]


def loss(s: Subject, obs: Observation, base: TargetResult | None,
         th: Thresholds) -> list[Finding]:
    """`udp.loss` when requests went unanswered well beyond chance; a note when within it."""
    sent, lost = udp_counts(obs.samples)
    if not sent or rate_limited(obs, th) is not None:
        return []
    allowed: list[tuple[float, str]] = []
    if base is not None:
        bsent, blost = udp_counts(base.observation.samples)
        if bsent:
            allowed.append((max(blost / bsent, th.max_loss),
                            f"the baseline lost {blost} of {bsent}"))
    if "max_loss" in s.expect:
        allowed.append((s.expect["max_loss"], "expect.max_loss"))
    if not allowed:
        allowed.append((th.max_loss, "built-in allowance"))
    what = f"{lost} of {sent} requests unanswered ({lost / sent:.0%})"
    for p, label in allowed:
        chance = binomial_tail(lost, sent, p)
        if lost / sent > p and chance < th.loss_alpha:
            return [Finding(f"{what}; allowed {p:.0%} ({label}); {chance_words(chance)}",
                            "degraded", "udp.loss")]
    if lost:
        p, label = allowed[0]
        return [Finding(f"{what}: within chance of {p:.0%} loss ({label})")]
    return []


def cutoff_words(facts: ExchangeFacts) -> str | None:
    """A cut-off in words: after how many packets and bytes, how far in, and whether a fresh
    flow was answered (a frozen flow) or not (an address blocked after its first packets)."""
    if facts.silent_after_packets is None or facts.silent_after_s is None:
        return None
    requests = facts.silent_after_packets
    answers = facts.answered or 0
    text = (f"calls connect, then go silent: answers stopped after {requests} requests and "
            f"{answers} answers ({requests + answers} packets")
    if facts.silent_after_bytes is not None:
        text += f", {facts.silent_after_bytes / 1000:.1f} KB sent"
    text += f"), {facts.silent_after_s:.1f} s in"
    if facts.fresh_flow_sent:
        if facts.fresh_flow_answered:
            text += ("; a fresh flow (a new source port) is answered again: the flow is frozen, "
                     "not the address")
        else:
            text += "; a fresh flow (a new source port) is not answered either"
    return text
