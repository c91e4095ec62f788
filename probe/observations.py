"""Observations: what happened on the wire, as facts only (no verdicts).

A target is measured `attempts` times; each time is a Sample, an ordered record of the layers it
went through (dns, tcp, tls, http, quic, stun, turn). A Phase holds one layer's facts: whether it
worked, how long it took in ms, and on failure a failure fact from `failures.py` (`timeout`,
`connection_reset`, ...). Layer-specific facts sit beside them, flat (`version`, `status`, `bytes`).
Extra diagnosis steps (the SNI swap, the version-negotiation ping) are phases of their own, kept
apart from the samples. Saved runs keep these whole, so they can be judged again later.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Phase(BaseModel):
    """One layer of one sample: ok or not, how long (ms), and the failure fact if any."""

    model_config = ConfigDict(extra="allow")

    ok: bool
    ms: float | None = None
    failure: str | None = None
    error: str | None = None  # the error as the OS or library worded it, for `detail` only

    def get(self, key: str, default: Any = None) -> Any:
        """A layer-specific fact, or default."""
        return (self.model_extra or {}).get(key, default)


class Sample(BaseModel):
    """One attempt at a target: its phases in the order they ran."""

    # default_factory, not `= {}`: pydantic deep-copies a mutable default on every model,
    # which showed in profiles of big runs (one Sample per attempt, one Observation per target).
    phases: dict[str, Phase] = Field(default_factory=dict)

    def add(self, layer: str, phase: Phase) -> Phase:
        self.phases[layer] = phase
        return phase

    @property
    def ok(self) -> bool:
        return bool(self.phases) and all(p.ok for p in self.phases.values())

    @property
    def failed(self) -> tuple[str, Phase] | None:
        """The first layer that failed, with its phase."""
        for layer, phase in self.phases.items():
            if not phase.ok:
                return layer, phase
        return None


class Observation(BaseModel):
    """Everything measured for one target: its samples and any diagnosis steps."""

    samples: list[Sample] = Field(default_factory=list)
    diagnosis: dict[str, Phase] = Field(default_factory=dict)
    interrupted: bool = False
