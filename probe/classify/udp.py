"""UDP verdicts of STUN/TURN exchanges that were answered: loss judged against chance.

A loss counts only when it is unlikely under an allowed loss rate p: the binomial tail
P(X >= lost | sent, p) must be below `loss_alpha` (thresholds.py). Against a baseline p is the
baseline's loss, at least `max_loss`; independently p is `expect.max_loss`; with neither,
`max_loss`. So 3 lost of 10 at p = 5 % (a tail of 1.2 %) is bad luck, 10 of 30 is not.
"""

from __future__ import annotations

import math

from probe.classify.verdict import Finding, Subject
from probe.metrics import udp_counts
from probe.observations import Observation
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


def loss(s: Subject, obs: Observation, base: TargetResult | None,
         th: Thresholds) -> list[Finding]:
    """`udp.loss` when requests went unanswered well beyond chance; a note when within it."""
    sent, lost = udp_counts(obs.samples)
    if not sent:
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
