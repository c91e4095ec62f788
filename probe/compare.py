"""`probe compare A.json B.json`: what changed between two saved runs, target by target.

Targets match by platform + feature + url, controls by url (as baselines do). For each: the
status transition and the deltas of RTT, throughput and loss (probe/metrics.py). A table for
people, as wide as the terminal and ending with the counts, where the eye lands; JSON
(`probe.compare/1`) for scripts. The command exits 1 when a target got worse.
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass
from typing import Any, Literal

from rich.console import Console
from rich.text import Text

from probe.metrics import Metrics, metrics_of
from probe.report.text import (
    NARROW,
    Column,
    fmt_ms,
    fmt_rate,
    grid_of,
    shown_rtt,
    target_verdict,
    verdict,
)
from probe.results import Key, Run, TargetResult, index_targets

SCHEMA = "probe.compare/1"
Change = Literal["same", "worse", "better", "changed", "added", "removed"]

# How bad a status is, for "worse"/"better"; inconclusive says nothing either way.
SEVERITY = {"ok": 0, "degraded": 1, "blocked": 2}
STYLE = {"worse": "bold red", "better": "green", "changed": "yellow", "added": "cyan",
         "removed": "magenta", "same": ""}

@dataclass(frozen=True)
class Row:
    """One target in both runs (either side may be missing)."""

    key: Key
    name: str | None
    before: TargetResult | None
    after: TargetResult | None

    @property
    def is_control(self) -> bool:
        return self.key[0] is None

    @property
    def change(self) -> Change:
        if self.before is None:
            return "added"
        if self.after is None:
            return "removed"
        a, b = self.before, self.after
        if (a.status, a.reason) == (b.status, b.reason):
            return "same"
        if a.status in SEVERITY and b.status in SEVERITY and a.status != b.status:
            return "worse" if SEVERITY[b.status] > SEVERITY[a.status] else "better"
        return "changed"


def rows(before: Run, after: Run) -> list[Row]:
    """Every target of either run, in the later run's order, then those only in the earlier."""
    old, new = index_targets(before), index_targets(after)
    keys = list(new) + [k for k in old if k not in new]
    return [Row(k, (new.get(k) or old[k]).name, old.get(k), new.get(k)) for k in keys]


def _verdict(t: TargetResult | None) -> str:
    return "-" if t is None else target_verdict(t)


def _side(t: TargetResult | None) -> dict[str, Any] | None:
    if t is None:
        return None
    m = metrics_of(t)
    return {"status": t.status, "reason": t.reason, "detail": t.detail, "rtt_ms": m.rtt_ms,
            "throughput_bps": m.throughput_bps, "loss": m.loss}


def _delta(a: float | None, b: float | None, digits: int) -> float | None:
    return None if a is None or b is None else round(b - a, digits)


def to_document(before: Run, after: Run) -> dict[str, Any]:
    """The comparison as a JSON-ready document."""
    targets = []
    counts: dict[str, int] = {}
    for row in rows(before, after):
        a, b = _side(row.before), _side(row.after)
        ma = metrics_of(row.before) if row.before else Metrics(None, None, None)
        mb = metrics_of(row.after) if row.after else Metrics(None, None, None)
        counts[row.change] = counts.get(row.change, 0) + 1
        targets.append({
            "platform": row.key[0], "feature": row.key[1], "url": row.key[2], "name": row.name,
            "control": row.is_control, "change": row.change, "before": a, "after": b,
            "delta": {"rtt_ms": _delta(ma.rtt_ms, mb.rtt_ms, 3),
                      "throughput_bps": _delta(ma.throughput_bps, mb.throughput_bps, 0),
                      "loss": _delta(ma.loss, mb.loss, 4)},
        })
    features_before = {(f.platform, f.feature): f for f in before.features}
    features = [{"platform": f.platform, "feature": f.feature,
                 "before": _feature(features_before.get((f.platform, f.feature))),
                 "after": _feature(f)} for f in after.features]
    return {
        "schema": SCHEMA,
        "before": {"started_at": before.started_at, "catalog": before.catalog.path},
        "after": {"started_at": after.started_at, "catalog": after.catalog.path},
        "network": {"before": _network(before), "after": _network(after)},
        "summary": counts,
        "features": features,
        "targets": targets,
    }


def _feature(f: Any) -> dict[str, str] | None:
    return None if f is None else {"status": f.status, "reason": f.reason}


def _network(run: Run) -> dict[str, str]:
    return {"status": run.network.status, "reason": run.network.reason}


# --- the table -------------------------------------------------------------------------------


def _ms(v: float | None) -> str:
    return fmt_ms(v, unit="", missing="-")


def _bps(v: float | None) -> str:
    return fmt_rate(v, mega="M", kilo="k", missing="-")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def _pair(a: float | None, b: float | None, fmt: Any) -> str:
    if a is None and b is None:
        return ""
    return f"{fmt(a)} → {fmt(b)}"


def _summary(document: dict[str, Any]) -> str:
    counts = document["summary"]
    total = sum(counts.values())
    parts = [f"{counts[k]} {k}" for k in ("worse", "better", "changed", "added", "removed")
             if counts.get(k)]
    return f"{total} targets: " + (", ".join(parts) if parts else "nothing changed")


def table(before: Run, after: Run, width: int | None = None, color: bool | None = None) -> str:
    """The comparison for people, `width` columns wide (default: the terminal's); coloured
    when `color` (default: when stdout is a terminal). Below NARROW columns, no figures."""
    from probe.report import terminal_width

    width = terminal_width() if width is None else width
    color = sys.stdout.isatty() if color is None else color
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=color,
                      color_system="standard" if color else None, highlight=False)
    document = to_document(before, after)
    figures = width >= NARROW
    columns = [Column("target", 2, 30, urls=True), Column("before", 0), Column("after", 0),
               Column("change", 0)]
    if figures:
        columns += [Column("RTT ms", 0), Column("throughput bit/s", 0), Column("loss", 0)]
    cells = []
    for row in rows(before, after):
        ma = _metrics(row.before)
        mb = _metrics(row.after)
        where = "(control)" if row.is_control else f"{row.key[0]} / {row.key[1]}"
        line = [Text(f"{where} {row.name or row.key[2]}"), Text(_verdict(row.before)),
                Text(_verdict(row.after)), Text(row.change, style=STYLE[row.change])]
        if figures:
            line += [Text(_pair(ma.rtt_ms, mb.rtt_ms, _ms)),
                     Text(_pair(ma.throughput_bps, mb.throughput_bps, _bps)),
                     Text(_pair(ma.loss, mb.loss, _pct))]
        cells.append(line)
    if cells:
        console.print(grid_of(columns, cells, width))
    net = document["network"]
    console.print(f"Network: {verdict(net['before']['status'], net['before']['reason'])} → "
                  f"{verdict(net['after']['status'], net['after']['reason'])}")
    console.print(Text(f"Comparing {before.started_at or '?'} → {after.started_at or '?'}: "
                       f"{_summary(document)}",
                       style="bold red" if document["summary"].get("worse") else "bold"))
    return out.getvalue()


def _metrics(t: TargetResult | None) -> Metrics:
    """A side's figures as a report shows them: no RTT for a target that never answered."""
    if t is None:
        return Metrics(None, None, None)
    m = metrics_of(t)
    return m._replace(rtt_ms=shown_rtt(t, m))


def render(before: Run, after: Run, fmt: str = "table") -> str:
    """The comparison of two runs as a table or as JSON (`probe.compare/1`)."""
    if fmt == "json":
        return json.dumps(to_document(before, after), indent=2, ensure_ascii=False) + "\n"
    return table(before, after)
