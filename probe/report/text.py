"""The human report: the targets that need a look, then the network line and a line per
platform, last, where the eye lands; the closing lines alone (`summary`); or markdown.

Strategy. A person reads the end of what a command printed first, so the answer comes last:
the table lists only the targets that are not ok or differ from the baseline (`details`: every
target), then notes (what was left out, an interruption), then the network line and the
platform lines. When the controls say the network is down, one sentence says so and no table
is printed unless asked: nothing else in such a run can be judged.

The table's columns follow the terminal's width (`layout_for`): from WIDE columns the
platform / feature, target, verdict, the baseline's verdict, RTT, rate / loss and detail;
below WIDE the baseline and RTT columns go (a changed baseline verdict moves under the
verdict) and the platform / feature tops the target cell; below NARROW rate / loss goes too. The widths are set here (`fit`), not by rich,
which shrinks the widest column first, down to nothing: here every column keeps at least its
longest word (up to WORD_CAP, past which a word such as a URL folds).
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table
from rich.text import Text

from probe.metrics import RTT_LAYERS, Metrics, metrics_of
from probe.observations import DnsFacts
from probe.results import PlatformResult, Run, TargetResult, index_targets

STYLE = {"ok": "green", "degraded": "yellow", "blocked": "bold red", "inconclusive": "magenta",
         "failed": "red"}
MARK = {"ok": "✔", "degraded": "◐", "blocked": "✘", "inconclusive": "?", "failed": "✘"}

WIDE = 120  # from here: platform / feature, the baseline's verdict and RTT in columns
NARROW = 100  # below: no rate / loss column either
WORD_CAP = 24  # a column keeps its longest word up to this width; a longer word folds

# Past this many rows even the rows that need a look are cut (and counted): nobody reads
# 10,000 rows, and rendering them took 7 s. --details lists every row; -f csv / json / jsonl
# always list every target.
TABLE_ROWS = 200

# Network verdicts under which no target can be judged (probe/classify/network.py BLINDING):
# the report then says so in a sentence instead of a table.
BLIND = ("network.down", "network.captive")

# A verdict that compares a figure with the baseline's names that figure in `detail` as the
# classifier counted it (a too-short baseline transfer counts conservatively); its column then
# shows the run's figure alone, so a row never shows two baseline figures for one measure.
FIGURE_IN_DETAIL = {"http.throttled": "flow", "latency.high": "rtt"}


def verdict(status: str, reason: str) -> str:
    return status if reason == "ok" else f"{status} ({reason})"


def status_word(t: TargetResult) -> str:
    """A target's status as the report words it: a control that does not work has "failed":
    nobody blocks a control, it only tells whether the network works."""
    return "failed" if t.platform is None and t.status == "blocked" else t.status


def target_verdict(t: TargetResult) -> str:
    return verdict(status_word(t), t.reason)


def summary_line(p: PlatformResult) -> str:
    """'WhatsApp: messaging ok · calls blocked (udp.timeout) · media degraded (http.throttled)'."""
    features = " · ".join(f"{fid} {v}" for fid, v in p.features.items())
    return f"{p.name or p.platform}: {features}" if features else f"{p.name or p.platform}"


def network_line(run: Run) -> str:
    n = run.network
    return f"Network: {verdict(n.status, n.reason)}" + (f" — {n.detail}" if n.detail else "")


def offline_sentence(run: Run) -> str | None:
    """The sentence that stands for the whole report when every control failed."""
    if run.network.reason != "network.down":
        return None
    tried = sum(1 for c in run.network.controls if c.status != "inconclusive")
    if tried == 1:
        return "No connection: the control site could not be reached — check your connection " \
               "and run again"
    return (f"No connection: none of the {tried} control sites could be reached — check your "
            f"connection and run again")


def interrupted_line(run: Run) -> str:
    left = sum(1 for t in run.targets if t.reason == "target.interrupted")
    if not left:
        return "Interrupted: every target had been measured"
    return (f"Interrupted: {left} of {len(run.targets)} targets not measured (target."
            f"interrupted); the lines below count only what finished")


def closing(run: Run, baseline: Run | None, pairs: bool = False) -> list[Text]:
    """The lines that end every report, in reading order: an interruption, the baseline, the
    network, then a line per platform; when the network is down, the one sentence last."""
    lines: list[Text] = []
    if run.interrupted:
        lines.append(Text(interrupted_line(run), style="yellow"))
    if baseline is not None:
        lines.append(Text(f"Baseline: {run.baseline or baseline.started_at}"
                          + ("; RTT and rate / loss columns: now | baseline" if pairs else "")))
    blind = run.network.reason in BLIND
    platforms = [Text(f"{MARK.get(p.status, '')} {summary_line(p)}", style=STYLE.get(p.status, ""))
                 for p in run.platforms if not (blind and p.reason == run.network.reason)]
    sentence = offline_sentence(run)
    if sentence is not None:
        return [*lines, *platforms, Text(sentence, style="bold magenta")]
    return [*lines, Text(network_line(run), style=STYLE.get(run.network.status, "")),
            *platforms]


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


# The layers whose answer is the target's own: a DNS answer only says the resolver answered.
_ANSWERING = tuple(model for model in RTT_LAYERS if model is not DnsFacts)


def answered(t: TargetResult) -> bool:
    """Whether the target itself answered in some sample (a dns:// target: its resolver)."""
    models = RTT_LAYERS if t.url.startswith("dns://") else _ANSWERING
    for sample in t.observation.samples:
        for model in models:
            facts = sample.get(model)
            if facts is not None and facts.ok:
                return True
    return False


def shown_rtt(t: TargetResult, m: Metrics) -> float | None:
    """The RTT a report shows: none for a target that never answered (its metric then is the
    resolver's round trip, which says nothing about the target)."""
    return m.rtt_ms if m.rtt_ms is not None and answered(t) else None


def _side(now: str, then: str | None) -> str:
    """'now | then' beside a baseline (a dash for a missing side), else just now."""
    if then is None or not (now or then):
        return now
    return f"{now or '-'} | {then or '-'}"


Row = tuple[str, TargetResult, TargetResult | None]


def _rows(run: Run, baseline: Run | None) -> list[Row]:
    """(group label, target, its baseline target) for controls, then targets."""
    base = index_targets(baseline) if baseline is not None else {}
    out = []
    for t in [*run.network.controls, *run.targets]:
        group = "(control)" if t.platform is None else f"{t.platform} / {t.feature}"
        out.append((group, t, base.get((t.platform, t.feature, t.url))))
    return out


def needs_a_look(t: TargetResult, then: TargetResult | None) -> bool:
    """Not ok now, or not as it was in the baseline."""
    return t.status != "ok" or (then is not None and (then.status, then.reason) != (
        t.status, t.reason))


def _listed(rows: list[Row], details: bool, blind: bool) -> tuple[list[Row], list[str]]:
    """The rows the table shows, and notes on those it leaves out."""
    if details:
        return rows, []
    if blind:
        return [], ["--details lists every control and target with what it got"]
    kept = [r for r in rows if needs_a_look(r[1], r[2])]
    notes = []
    left = [r for r in rows if not needs_a_look(r[1], r[2])]
    if left:
        targets = sum(1 for r in left if r[1].platform is not None)
        controls = len(left) - targets
        parts = [f"{n:,} {word}{'s' if n != 1 else ''}"
                 for n, word in ((targets, "target"), (controls, "control")) if n]
        what = " and ".join(parts)
        if kept:
            notes.append(f"Also ok, not listed: {what} (--details lists them)")
        else:
            notes.append(f"All ok: {what} (--details lists them with their timings)")
    if len(kept) > TABLE_ROWS:
        notes.append(f"Not listed: {len(kept) - TABLE_ROWS:,} more that need a look (past "
                     f"{TABLE_ROWS} rows; --details or -f csv lists all)")
        kept = kept[:TABLE_ROWS]
    return kept, notes


# --- the table's columns -------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Which columns a table of this width has."""

    group: bool  # a platform / feature column (else the group tops the target cell)
    baseline: bool  # the baseline's verdict in a column (else under the verdict, if changed)
    rtt: bool
    flow: bool  # rate / loss


def layout_for(width: int) -> Layout:
    if width >= WIDE:
        return Layout(group=True, baseline=True, rtt=True, flow=True)
    if width >= NARROW:
        return Layout(group=False, baseline=False, rtt=False, flow=True)
    return Layout(group=False, baseline=False, rtt=False, flow=False)


@dataclass(frozen=True)
class Column:
    header: str
    weight: int  # a share of the room left; 0: a short column, at its natural width if it fits
    comfort: int = 0  # the width it gets (if it needs it) before the short columns widen
    urls: bool = False  # its lines break after URL punctuation rather than anywhere


def fit(natural: Sequence[int], floor: Sequence[int], weight: Sequence[int],
        comfort: Sequence[int], room: int) -> list[int]:
    """Column widths within `room` characters: every natural width when they all fit; else
    each column first its floor (never less: no column is shrunk to nothing), then the
    columns with a weight up to their `comfort` width, then the short ones (weight 0) up to
    their natural width, then the others share what is left by weight, each up to its
    natural width. Over `room` only when the floors are."""
    if sum(natural) <= room:
        return list(natural)
    widths = [min(n, f) for n, f in zip(natural, floor, strict=True)]
    spare = room - sum(widths)

    def share(limit: Sequence[int]) -> None:
        nonlocal spare
        while spare > 0:
            growable = [i for i, w in enumerate(weight) if w and widths[i] < limit[i]]
            if not growable:
                return
            i = min(growable, key=lambda i: widths[i] / weight[i])
            widths[i] += 1
            spare -= 1

    share([min(n, c) for n, c in zip(natural, comfort, strict=True)])
    for i, w in enumerate(weight):
        if w == 0 and spare > 0:
            give = min(natural[i] - widths[i], spare)
            widths[i] += give
            spare -= give
    share(natural)
    return widths


def _natural(cell: Text) -> int:
    return max((Text(line).cell_len for line in cell.plain.split("\n")), default=0)


def _longest_word(cell: Text) -> int:
    return max((Text(word).cell_len for word in cell.plain.split()), default=0)


# Where a short cell breaks when it must: before a reason code "(...)", after "now |" or
# "before →".
_BREAK = re.compile(r" (?=\()|(?<=[|→]) ")


def _two_lines(cell: Text) -> int:
    """The width a short cell needs on two lines: 'blocked' over '(tcp.reset)', '0.0 ms |'
    over '0.0 ms'."""
    return max((Text(piece).cell_len for line in cell.plain.split("\n")
                for piece in _BREAK.split(line)), default=0)


def _overhead(columns: int) -> int:
    """Characters a rich table (pad_edge=False) adds: a border per column and one more, and a
    space each side of each column but the outer two."""
    return columns + 1 + 2 * columns - 2


def _cut(cell: Text, offsets: list[tuple[int, int]]) -> Text:
    """The cell with each (start, end) span replaced by a line break, its styles kept."""
    if not offsets:
        return cell
    bounds = sorted({b for span in offsets for b in span})
    pieces = cell.divide(bounds)
    gaps = {start for start, end in offsets if end > start}
    kept, at = [], 0
    for piece in pieces:
        if at not in gaps:
            kept.append(piece)
        at += len(piece)
    return Text("\n").join(kept)


def _reflow_short(cell: Text, width: int) -> Text:
    """A short cell wider than its column, on two lines at its break ('blocked' over
    '(tcp.reset)'), rather than wherever a space falls."""
    if _natural(cell) <= width:
        return cell
    return _cut(cell, [m.span() for m in _BREAK.finditer(cell.plain)])


def _reflow_urls(cell: Text, width: int) -> Text:
    """Lines wider than the column broken after a space or a URL's punctuation (a label such
    as https://media.example/x folds after 'media.', not in the middle of a word)."""
    cuts: list[tuple[int, int]] = []
    start = 0
    for line in cell.plain.split("\n"):
        at = 0
        while len(line) - at > width:
            window = line[at:at + width]
            cut = window.rfind(" ") + 1  # a space first, then the last punctuation that does
            if cut <= 0:  # not leave a stub ("https:" before "//")
                cut = max(window.rfind(c) for c in "/.:?&=-") + 1
                cut = cut if cut > width // 3 else width
            space = line[at + cut - 1] == " "
            cuts.append((start + at + cut - (1 if space else 0), start + at + cut))
            at += cut
        start += len(line) + 1
    return _cut(cell, cuts)


def grid_of(columns: Sequence[Column], rows: Sequence[Sequence[Text]], width: int) -> Table:
    """A rich table of these rows whose column widths are `fit` to `width`."""
    room = width - _overhead(len(columns))
    cap = max(12, min(WORD_CAP, room // 4))  # a URL folds sooner on a narrow screen
    natural, floor = [], []
    for i, column in enumerate(columns):
        cells = [row[i] for row in rows]
        header = Text(column.header)
        natural.append(max(_natural(c) for c in [header, *cells]))
        least = _two_lines if column.weight == 0 else _longest_word
        floor.append(max(min(least(c), cap) for c in [*cells, header] if c.plain)
                     if column.weight else max(_longest_word(header), *map(least, cells)))
    widths = fit(natural, floor, [c.weight for c in columns], [c.comfort for c in columns],
                 room)
    grid = Table(show_header=True, header_style="bold", expand=False, pad_edge=False)
    for column, w in zip(columns, widths, strict=True):
        grid.add_column(column.header, width=max(w, 1), overflow="fold")
    for row in rows:
        grid.add_row(*(_reflow_urls(c, w) if column.urls else
                       _reflow_short(c, w) if column.weight == 0 else c
                       for c, column, w in zip(row, columns, widths, strict=True)))
    return grid


def _verdict_cell(t: TargetResult) -> Text:
    word = status_word(t)
    return Text(f"{MARK.get(word, '')} {verdict(word, t.reason)}", style=STYLE.get(word, ""))


def _cells(layout: Layout, group: str, show_group: bool, t: TargetResult,
           then: TargetResult | None, baseline: Run | None, judged_against: bool) -> list[Text]:
    now_m = metrics_of(t)
    then_m = metrics_of(then) if then is not None else None
    beside = baseline is not None
    in_detail = FIGURE_IN_DETAIL.get(t.reason) if judged_against else None
    cells: list[Text] = []
    if layout.group:
        cells += [Text(group if show_group else "", style="bold" if show_group else ""),
                  Text(label(t))]
    else:
        target = Text(f"{group}\n", style="bold") if show_group else Text()
        target.append(label(t))
        cells.append(target)
    status = _verdict_cell(t)
    if layout.baseline and beside:
        cells += [status, Text(target_verdict(then) if then is not None else "-",
                               style=STYLE.get(status_word(then), "") if then else "")]
    else:
        if beside and then is not None and (then.status, then.reason) != (t.status, t.reason):
            status.append(f"\nbaseline: {target_verdict(then)}", style="dim")
        cells.append(status)
    if layout.rtt:
        then_rtt = fmt_ms(shown_rtt(then, then_m)) if then is not None and then_m else "-"
        cells.append(Text(_side(fmt_ms(shown_rtt(t, now_m)), None if not beside or in_detail
                                == "rtt" else then_rtt)))
    if layout.flow:
        then_flow = fmt_flow(then_m) if then_m is not None else "-"
        cells.append(Text(_side(fmt_flow(now_m), None if not beside or in_detail == "flow"
                                else then_flow)))
    cells.append(Text(t.detail))
    return cells


def _columns(layout: Layout, beside: bool) -> list[Column]:
    columns = [Column("platform / feature", 1, 20), Column("target", 2, 28, urls=True)] \
        if layout.group else [Column("target", 2, 22, urls=True)]
    columns.append(Column("verdict", 0))
    if layout.baseline and beside:
        columns.append(Column("baseline", 0))
    if layout.rtt:
        columns.append(Column("RTT", 0))
    if layout.flow:
        columns.append(Column("rate / loss", 0))
    columns.append(Column("detail", 4, 40))
    return columns


def _console(out: io.StringIO, width: int, color: bool) -> Console:
    return Console(file=out, width=width, force_terminal=color,
                   color_system="standard" if color else None, highlight=False,
                   legacy_windows=False)


def table(run: Run, baseline: Run | None = None, width: int = 160,
          color: bool | None = None, details: bool = False) -> str:
    """The report for a terminal `width` columns wide; coloured when `color` (default: when
    stdout is a terminal). Lists the targets that need a look, or every target (`details`)."""
    color = sys.stdout.isatty() if color is None else color
    out = io.StringIO()
    console = _console(out, width, color)
    blind = run.network.reason in BLIND
    rows, notes = _listed(_rows(run, baseline), details, blind)
    layout = layout_for(width)
    if rows:
        judged_against = run.baseline is not None  # its details compare with a baseline
        cells, last = [], None
        for group, t, then in rows:
            cells.append(_cells(layout, group, group != last, t, then, baseline,
                                judged_against))
            last = group
        console.print(grid_of(_columns(layout, baseline is not None), cells, width))
    for note in notes:
        console.print(Text(note, style="dim"))
    for line in closing(run, baseline, pairs=bool(rows) and layout.rtt):
        console.print(line, soft_wrap=not color)  # a file or a pipe: a line per platform
    return out.getvalue()


def summary(run: Run, baseline: Run | None = None, width: int = 160,
            color: bool | None = None) -> str:
    """The closing lines alone (an interruption, the baseline, the network, a line per
    platform), for scripts and small screens: `-f summary`."""
    color = sys.stdout.isatty() if color is None else color
    out = io.StringIO()
    console = _console(out, width, color)
    for line in closing(run, baseline):
        console.print(line, soft_wrap=not color)  # a file or a pipe: a line per platform
    return out.getvalue()


# --- markdown ------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(run: Run, baseline: Run | None = None) -> str:
    """The same report as markdown, to paste into an issue or a report: the answer first, as
    a document reads, then every target."""
    lines = [f"# probe report — {run.started_at}", ""]
    if run.interrupted:
        lines += [f"_{interrupted_line(run)}._", ""]
    for p in run.platforms:
        lines.append(f"- **{p.name or p.platform}**: {summary_line(p).split(': ', 1)[-1]}")
    n = run.network
    sentence = offline_sentence(run)
    lines += ["", f"**{sentence}**" if sentence else (
        f"Network: **{verdict(n.status, n.reason)}**" + (f" — {n.detail}" if n.detail else "")),
        ""]
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
        cells = [t.platform or "(control)", t.feature or "", label(t), target_verdict(t)]
        if baseline is not None:
            mt = metrics_of(then) if then else None
            cells += [target_verdict(then) if then else "-", fmt_ms(shown_rtt(t, m)),
                      fmt_ms(shown_rtt(then, mt)) if then and mt else "-", fmt_flow(m),
                      fmt_flow(mt) if mt else "-"]
        else:
            cells += [fmt_ms(shown_rtt(t, m)), fmt_flow(m)]
        cells.append(t.detail)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
