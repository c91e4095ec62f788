"""The renderers, on runs saved to files in the test: table, markdown, csv, and `probe report -b`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from probe.cli import app
from probe.report import CSV_COLUMNS, render
from probe.report.text import table
from probe.results import Run, read_run

SUMMARY = "WhatsApp: messaging ok · calls blocked (udp.timeout) · media degraded (http.throttled)"


def runs(saved: tuple[Path, Path]) -> tuple[Run, Run]:
    return read_run(saved[0]), read_run(saved[1])


def test_table_starts_with_platform_lines_then_network(saved: tuple[Path, Path]) -> None:
    _, now = runs(saved)
    lines = render(now, "table").splitlines()
    assert lines[0] == f"◐ {SUMMARY}"
    assert lines[1].startswith("Network: ok")
    assert "\x1b[" not in "\n".join(lines)


def test_table_beside_a_baseline(saved: tuple[Path, Path]) -> None:
    base, now = runs(saved)
    text = render(now, "table", base)
    assert "blocked (udp.timeout) | ok" in text
    assert "130 kbit/s | 20.0 Mbit/s" in text
    assert "100% loss | 0% loss" in text
    assert "45 ms | 45 ms" in text


def test_colours_only_when_asked(saved: tuple[Path, Path]) -> None:
    _, now = runs(saved)
    coloured = table(now, color=True)
    assert "\x1b[" in coloured and "udp.timeout" in coloured


def test_markdown(saved: tuple[Path, Path]) -> None:
    base, now = runs(saved)
    text = render(now, "markdown", base)
    assert f"- **WhatsApp**: {SUMMARY.split(': ', 1)[1]}" in text
    assert "Network: **ok**" in text
    row = next(line for line in text.splitlines() if "stun://" in line)
    assert row.count("|") == 11  # ten cells
    assert "| blocked (udp.timeout) | ok |" in row


def test_markdown_escapes_pipes(saved: tuple[Path, Path]) -> None:
    _, now = runs(saved)
    now.targets[0].detail = "a | b"
    assert "a \\| b" in render(now, "markdown")


def test_csv_columns_are_stable_and_carry_metrics(saved: tuple[Path, Path]) -> None:
    _, now = runs(saved)
    text = render(now, "csv")
    assert text.splitlines()[0] == (
        "platform,feature,url,name,status,reason,samples,ok_samples,detail,"
        "rtt_ms,throughput_bps,loss")
    assert tuple(text.splitlines()[0].split(",")) == CSV_COLUMNS
    rows = {r["feature"] or "control": r for r in csv.DictReader(io.StringIO(text))}
    assert rows["control"]["platform"] == "(control)"
    assert float(rows["media"]["throughput_bps"]) == pytest.approx(130e3)
    assert float(rows["calls"]["loss"]) == 1.0 and rows["calls"]["rtt_ms"] == ""
    assert float(rows["messaging"]["rtt_ms"]) == 45.0


def test_report_rejudges_against_a_baseline(saved: tuple[Path, Path]) -> None:
    base, now = saved
    plain = CliRunner().invoke(app, ["report", str(now), "--format", "json"])
    assert plain.exit_code == 0, plain.output
    media = next(t for t in json.loads(plain.stdout)["targets"] if t["feature"] == "media")
    assert "built-in floor" in media["detail"]
    again = CliRunner().invoke(app, ["report", str(now), "-b", str(base), "--format", "json"])
    assert again.exit_code == 0, again.output
    document = json.loads(again.stdout)
    assert document["baseline"] == str(base)
    media = next(t for t in document["targets"] if t["feature"] == "media")
    assert media["reason"] == "http.throttled" and "below the baseline's 20.0 Mbit/s" in (
        media["detail"])


def test_report_against_itself_makes_failures_target_down(saved: tuple[Path, Path]) -> None:
    _, now = saved
    result = CliRunner().invoke(app, ["report", str(now), "-b", str(now), "--format", "csv"])
    rows = {r["feature"]: r for r in csv.DictReader(io.StringIO(result.stdout))}
    assert (rows["calls"]["status"], rows["calls"]["reason"]) == ("inconclusive", "target.down")


def test_a_big_table_lists_the_targets_that_need_a_look(saved: tuple[Path, Path]) -> None:
    """Past TABLE_ROWS rows the table keeps the targets not ok (now or in the baseline) and the
    controls, and says how many it left out; csv still lists every target."""
    from probe.report.text import TABLE_ROWS

    _, now = runs(saved)
    ok = next(t for t in now.targets if t.status == "ok")
    bad = [t for t in now.targets if t.status != "ok"]
    many = [ok.model_copy(update={"url": f"tcp://192.0.2.10:{1000 + i}"})
            for i in range(TABLE_ROWS + 50)]
    big = now.model_copy(update={"targets": [*many, *bad]})
    text = table(big)
    assert all(t.url in text for t in bad)
    assert "192.0.2.10:1000 " not in text and "192.0.2.10:1249" not in text
    assert f"Not listed: {TABLE_ROWS + 50:,} ok targets" in text
    rows = list(csv.reader(io.StringIO(render(big, "csv"))))
    assert len(rows) == 1 + len(now.network.controls) + len(big.targets)
    small = table(now)  # under the limit: every target, no note
    assert ok.url in small and "Not listed" not in small
