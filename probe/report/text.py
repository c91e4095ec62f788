"""The human report: a line per platform, the network line, then every target (beside its
baseline when one is given), as a rich table or as paste-able markdown."""

from __future__ import annotations

import io
import sys

from rich.console import Console
from rich.table import Table
from rich.text import Text

from probe.metrics import Metrics, metrics_of
from probe.results import PlatformResult, Run, TargetResult, index_targets

STYLE = {"ok": "green", "degraded": "yellow", "blocked": "bold red", "inconclusive": "magenta"}
MARK = {"ok": "✔", "degraded": "◐", "blocked": "✘", "inconclusive": "?"}

def verdict(status: str, reason: str) -> str:
    return status if reason == "ok" else f"{status} ({reason})"


def summary_line(p: PlatformResult) -> str:
    """'WhatsApp: messaging ok · calls blocked (udp.timeout) · media degraded (http.throttled)'."""
    features = " · ".join(f"{fid} {v}" for fid, v in p.features.items())
    return f"{p.name or p.platform}: {features}" if features else f"{p.name or p.platform}"


def network_line(run: Run) -> str:
    n = run.network
    return f"Network: {verdict(n.status, n.reason)}" + (f" — {n.detail}" if n.detail else "")


def label(t: TargetResult) -> str:
    return f"{t.name} ({t.url})" if t.name else t.url


def fmt_ms(v: float | None, unit: str = " ms", missing: str = "") -> str:
    return missing if v is None else f"{v:.0f}{unit}" if v >= 10 else f"{v:.1f}{unit}"


def fmt_rate(v: float | None, mega: str = " Mbit/s", kilo: str = " kbit/s",
             missing: str = "") -> str:
    if v is None:
        return missing
    return f"{v / 1e6:.1f}{mega}" if v >= 1e6 else f"{v / 1e3:.0f}{kilo}"


def fmt_flow(m: Metrics) -> str:
    """Throughput for https targets, loss for STUN/TURN ones."""
    if m.throughput_bps is not None:
        return fmt_rate(m.throughput_bps)
    return "" if m.loss is None else f"{m.loss:.0%} loss"


def _side(now: str, then: str | None) -> str:
    """'now | then' beside a baseline (a dash for a missing side), else just now."""
    if then is None or not (now or then):
        return now
    return f"{now or '-'} | {then or '-'}"


def _rows(run: Run, baseline: Run | None) -> list[tuple[str, TargetResult, TargetResult | None]]:
    """(group label, target, its baseline target) for controls, then targets."""
    base = index_targets(baseline) if baseline is not None else {}
    out = []
    for t in [*run.network.controls, *run.targets]:
        group = "(control)" if t.platform is None else f"{t.platform} / {t.feature}"
        out.append((group, t, base.get((t.platform, t.feature, t.url))))
    return out


# Past this many rows the table lists only the targets that need a look (not ok now, or not ok
# in the baseline) and counts the rest: nobody reads 10,000 rows, and rendering them took 7 s.
# -f csv / json / jsonl always list every target.
TABLE_ROWS = 200


def _needs_a_look(t: TargetResult, then: TargetResult | None) -> bool:
    return t.platform is None or t.status != "ok" or (then is not None and then.status != "ok")


def table(run: Run, baseline: Run | None = None, width: int = 160,
          color: bool | None = None, details: bool = True) -> str:
    """The report for a terminal; coloured when `color` (default: when stdout is a terminal)."""
    color = sys.stdout.isatty() if color is None else color
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=color,
                      color_system="standard" if color else None, highlight=False)
    for p in run.platforms:
        console.print(Text(f"{MARK.get(p.status, '')} {summary_line(p)}",
                           style=STYLE.get(p.status, "")))
    console.print(Text(network_line(run), style=STYLE.get(run.network.status, "")))
    if baseline is not None:
        console.print(f"Baseline: {run.baseline or baseline.started_at} "
                      f"(columns show now | baseline)")
    grid = Table(show_header=True, header_style="bold", expand=False, pad_edge=False)
    grid.add_column("platform / feature")
    grid.add_column("target", overflow="fold")
    grid.add_column("verdict" if baseline is None else "verdict | baseline", no_wrap=True)
    grid.add_column("RTT", no_wrap=True)
    grid.add_column("rate / loss", no_wrap=True)
    grid.add_column("detail", overflow="fold")
    rows = _rows(run, baseline)
    hidden: list[str] = []
    if len(rows) > TABLE_ROWS:
        kept = [r for r in rows if _needs_a_look(r[1], r[2])]
        if len(rows) > len(kept):
            hidden.append(f"{len(rows) - len(kept):,} ok targets")
        if len(kept) > TABLE_ROWS:
            hidden.append(f"{len(kept) - TABLE_ROWS:,} more that are not ok")
        rows = kept[:TABLE_ROWS]
    last = None
    for group, t, then in rows:
        now_m = metrics_of(t)
        then_m = metrics_of(then) if then is not None else None
        status = Text(f"{MARK.get(t.status, '')} {verdict(t.status, t.reason)}",
                      style=STYLE.get(t.status, ""))
        if baseline is not None:
            status.append(" | ")
            status.append(verdict(then.status, then.reason) if then else "-",
                          style=STYLE.get(then.status, "") if then else "")
        grid.add_row(
            "" if group == last else group, label(t), status,
            _side(fmt_ms(now_m.rtt_ms), fmt_ms(then_m.rtt_ms) if then_m else
                  ("-" if baseline else None)),
            _side(fmt_flow(now_m), fmt_flow(then_m) if then_m else ("-" if baseline else None)),
            t.detail)
        last = group
    if rows:
        console.print(grid)
    if hidden:
        console.print(f"Not listed: {' and '.join(hidden)} (past {TABLE_ROWS} rows the table "
                      f"shows only targets not ok now or in the baseline; -f csv lists all)")
    if run.interrupted:
        console.print(Text("interrupted: the results above are the targets finished so far",
                           style="yellow"))
    return out.getvalue()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(run: Run, baseline: Run | None = None) -> str:
    """The same report as markdown, to paste into an issue or a report."""
    lines = [f"# probe report — {run.started_at}", ""]
    for p in run.platforms:
        lines.append(f"- **{p.name or p.platform}**: {summary_line(p).split(': ', 1)[-1]}")
    n = run.network
    lines += ["", f"Network: **{verdict(n.status, n.reason)}**"
              + (f" — {n.detail}" if n.detail else ""), ""]
    if baseline is not None:
        lines += [f"Baseline: `{run.baseline or baseline.started_at}`", ""]
        header = ("| platform | feature | target | verdict | baseline | RTT | RTT then "
                  "| rate / loss | then | detail |")
        lines += [header, "|---|---|---|---|---|---|---|---|---|---|"]
    else:
        lines += ["| platform | feature | target | verdict | RTT | rate / loss | detail |",
                  "|---|---|---|---|---|---|---|"]
    for _, t, then in _rows(run, baseline):
        m = metrics_of(t)
        cells = [t.platform or "(control)", t.feature or "", label(t), verdict(t.status, t.reason)]
        if baseline is not None:
            mt = metrics_of(then) if then else None
            cells += [verdict(then.status, then.reason) if then else "-", fmt_ms(m.rtt_ms),
                      fmt_ms(mt.rtt_ms) if mt else "-", fmt_flow(m), fmt_flow(mt) if mt else "-"]
        else:
            cells += [fmt_ms(m.rtt_ms), fmt_flow(m)]
        cells.append(t.detail)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if run.interrupted:
        lines += ["", "_Interrupted: the results above are the targets finished so far._"]
    return "\n".join(lines) + "\n"
