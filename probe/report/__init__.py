"""Rendering runs for people and scripts: table, summary, json, jsonl, csv and markdown."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
from collections.abc import Callable

from probe.metrics import metrics_of
from probe.results import Run, TargetResult, jsonl_lines

FORMATS = ("table", "summary", "json", "jsonl", "csv", "markdown")

# The width of a table written to a file or a pipe (COLUMNS, when set, overrides it).
PLAIN_WIDTH = 160

# Stable: new columns are only ever appended, so scripts reading by position keep working.
CSV_COLUMNS = (
    "platform", "feature", "url", "name", "status", "reason", "samples", "ok_samples", "detail",
    "rtt_ms", "throughput_bps", "loss",
)


def render_json(run: Run, baseline: Run | None = None) -> str:
    return run.to_json() + "\n"


def render_jsonl(run: Run, baseline: Run | None = None) -> str:
    """The run as JSONL records (probe/results.py), as `-o run.jsonl` holds them."""
    return "".join(line + "\n" for line in jsonl_lines(run))


def render_csv(run: Run, baseline: Run | None = None) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for t in run.network.controls:
        writer.writerow({**csv_row(t), "platform": "(control)"})
    for t in run.targets:
        writer.writerow(csv_row(t))
    return out.getvalue()


def csv_row(target: TargetResult) -> dict[str, object]:
    """A target's CSV cells: its verdict, and RTT (ms), throughput (bit/s) and loss (fraction)
    from `probe.metrics` (empty when not measured)."""
    return {**target.model_dump(include=set(CSV_COLUMNS)), **metrics_of(target)._asdict()}


def render_markdown(run: Run, baseline: Run | None = None) -> str:
    from probe.report.text import markdown

    return markdown(run, baseline)


def render_table(run: Run, baseline: Run | None = None) -> str:
    from probe.report.text import table

    return table(run, baseline, width=terminal_width(), color=False)


def render_summary(run: Run, baseline: Run | None = None) -> str:
    from probe.report.text import summary

    return summary(run, baseline, width=terminal_width(), color=False)


RENDERERS: dict[str, Callable[[Run, Run | None], str]] = {
    "table": render_table,
    "summary": render_summary,
    "json": render_json,
    "jsonl": render_jsonl,
    "csv": render_csv,
    "markdown": render_markdown,
}


def render(run: Run, fmt: str, baseline: Run | None = None) -> str:
    """A run in one of FORMATS; `baseline` adds the side-by-side comparison where it fits."""
    return RENDERERS[fmt](run, baseline)


def terminal_width() -> int:
    """The width to render for: the terminal's when stdout is one, else COLUMNS when set,
    else PLAIN_WIDTH (a file or a pipe has no width; wide keeps every column)."""
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else PLAIN_WIDTH


def render_for_terminal(run: Run, fmt: str, baseline: Run | None = None, *,
                        details: bool = False) -> str:
    """A run for stdout: the table (every target with `details`) and the summary as wide as
    the terminal and coloured when stdout is one; other formats as `render`."""
    from probe.report import text

    color = sys.stdout.isatty()
    if fmt == "table":
        return text.table(run, baseline, width=terminal_width(), color=color, details=details)
    if fmt == "summary":
        return text.summary(run, baseline, width=terminal_width(), color=color)
    return render(run, fmt, baseline)


def dumps_compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
