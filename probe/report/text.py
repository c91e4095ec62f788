"""The human report: a one-line-per-platform summary, then platform -> feature -> target."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table
from rich.text import Text

from probe.results import PlatformResult, Run, TargetResult

STYLE = {"ok": "green", "degraded": "yellow", "blocked": "bold red", "inconclusive": "magenta"}
MARK = {"ok": "✔", "degraded": "◐", "blocked": "✘", "inconclusive": "?"}


def _verdict(status: str, reason: str) -> str:
    return status if reason == "ok" else f"{status} ({reason})"


def summary_line(p: PlatformResult) -> str:
    """'WhatsApp: messaging ok · calls blocked (udp.timeout)'."""
    features = " · ".join(f"{fid} {verdict}" for fid, verdict in p.features.items())
    return f"{p.name or p.platform}: {features}" if features else f"{p.name or p.platform}"


def _status_text(status: str, reason: str) -> Text:
    return Text(f"{MARK.get(status, '')} {_verdict(status, reason)}", style=STYLE.get(status, ""))


def _target_label(t: TargetResult) -> str:
    return f"{t.name} ({t.url})" if t.name else t.url


def table(run: Run, baseline: Run | None = None, width: int = 120) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=False, color_system=None)
    network = run.network
    console.print(
        Text(f"Network: {_verdict(network.status, network.reason)}"
             + (f" — {network.detail}" if network.detail else ""),
             style=STYLE.get(network.status, ""))
    )
    for p in run.platforms:
        console.print(Text(f"{MARK.get(p.status, '')} {summary_line(p)}", style=STYLE[p.status]))
    grid = Table(show_header=True, header_style="bold", expand=False, pad_edge=False)
    grid.add_column("platform / feature")
    grid.add_column("target", overflow="fold")
    grid.add_column("verdict", no_wrap=True)
    grid.add_column("detail", overflow="fold")
    for c in network.controls:
        grid.add_row("(control)", _target_label(c), _status_text(c.status, c.reason), c.detail)
    last = None
    for t in run.targets:
        group = f"{t.platform} / {t.feature}"
        grid.add_row("" if group == last else group, _target_label(t),
                     _status_text(t.status, t.reason), t.detail)
        last = group
    console.print(grid)
    if run.interrupted:
        console.print(Text("interrupted: the results above are the targets finished so far",
                           style="yellow"))
    return out.getvalue()


def markdown(run: Run, baseline: Run | None = None) -> str:
    lines = [f"# probe report — {run.started_at}", ""]
    lines.append(f"Network: **{_verdict(run.network.status, run.network.reason)}**"
                 + (f" — {run.network.detail}" if run.network.detail else ""))
    lines.append("")
    for p in run.platforms:
        lines.append(f"- **{p.name or p.platform}**: {summary_line(p).split(': ', 1)[-1]}")
    lines += ["", "| platform | feature | target | verdict | detail |", "|---|---|---|---|---|"]
    for t in run.network.controls + run.targets:
        cells = [t.platform or "(control)", t.feature or "", _target_label(t),
                 _verdict(t.status, t.reason), t.detail]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
