"""Rendering runs for people and scripts: table, json, jsonl, csv and markdown."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from collections.abc import Callable

from probe.metrics import metrics_of
from probe.results import Run, TargetResult, jsonl_lines

FORMATS = ("table", "json", "jsonl", "csv", "markdown")

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

    return table(run, baseline)


RENDERERS: dict[str, Callable[[Run, Run | None], str]] = {
    "table": render_table,
    "json": render_json,
    "jsonl": render_jsonl,
    "csv": render_csv,
    "markdown": render_markdown,
}


def render(run: Run, fmt: str, baseline: Run | None = None) -> str:
    """A run in one of FORMATS; `baseline` adds the side-by-side comparison where it fits."""
    return RENDERERS[fmt](run, baseline)


def render_for_terminal(run: Run, fmt: str, baseline: Run | None = None, *,
                        details: bool = False) -> str:
    """A run for stdout: a table as wide as the terminal when stdout is one, else `render`."""
    if fmt == "table" and sys.stdout.isatty():
        from probe.report import text

        width = shutil.get_terminal_size().columns
        return text.table(run, baseline, width=width, details=details)
    if fmt == "table":
        from probe.report import text

        return text.table(run, baseline, details=details)
    return render(run, fmt, baseline)


def dumps_compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
