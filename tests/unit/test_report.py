"""The renderers, on runs saved to files in the test: the table (what it lists, its columns at
each width, where the answer sits), the summary, markdown, csv, `probe report -b`, and the
detail text a person reads."""

from __future__ import annotations

import asyncio
import csv
import errno
import io
import json
import re
from pathlib import Path

import pytest
from builders import obs, ph, run_of, sample
from typer.testing import CliRunner

from probe import failures as F
from probe.classify.reasons import describe
from probe.cli import app
from probe.observations import TcpFacts
from probe.report import CSV_COLUMNS, render, terminal_width
from probe.report.text import (
    NARROW,
    TABLE_ROWS,
    WIDE,
    fit,
    offline_sentence,
    summary,
    table,
)
from probe.results import NetworkResult, Run, TargetResult, read_run

SUMMARY = "WhatsApp: messaging ok · calls blocked (udp.timeout) · media degraded (http.throttled)"
WIDTHS = (60, 80, 100, 119, 120, 160)


def runs(saved: tuple[Path, Path]) -> tuple[Run, Run]:
    return read_run(saved[0]), read_run(saved[1])


def columns_of(text: str) -> list[int]:
    """The width of each column of the first table in `text`, from its top border."""
    top = next(line for line in text.splitlines() if line.startswith("┏"))
    return [len(part) for part in top.strip("┏┓").split("┳")]


def headers_of(text: str) -> list[str]:
    """Each column's header (its words over the header's lines)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("┏")) + 1
    end = next(i for i, line in enumerate(lines) if line.startswith("┡"))
    cells: list[list[str]] = []
    for line in lines[start:end]:
        for i, cell in enumerate(line.strip("┃").split("┃")):
            if len(cells) <= i:
                cells.append([])
            cells[i] += cell.split()
    return [" ".join(words) for words in cells]


# --- what the table lists, and where the answer sits --------------------------------------


def test_the_answer_comes_last(saved: tuple[Path, Path]) -> None:
    """The network line and the platform lines end the report, below the table."""
    _, now = runs(saved)
    lines = table(now, color=False).splitlines()
    assert lines[-1] == f"◐ {SUMMARY}"
    assert lines[-2].startswith("Network: ok")
    assert lines[0].startswith("┏")  # the table first
    assert "\x1b[" not in "\n".join(lines)


def test_by_default_only_the_rows_that_need_a_look(saved: tuple[Path, Path]) -> None:
    _, now = runs(saved)
    text = table(now, color=False)
    assert "stun://192.0.2.20:3478" in text and "https://192.0.2.30/" in text
    assert "tcp://192.0.2.10:5222" not in text and "tcp://192.0.2.1:443" not in text
    assert "Also ok, not listed: 1 target and 1 control (--details lists them)" in text
    every = table(now, color=False, details=True)
    assert "tcp://192.0.2.10:5222" in every and "tcp://192.0.2.1:443" in every
    assert "not listed" not in every


def test_a_row_that_changed_since_the_baseline_is_listed_though_ok(
        saved: tuple[Path, Path]) -> None:
    base, now = runs(saved)
    text = table(base, now, color=False)  # the honest run beside the censored one
    assert "stun://192.0.2.20:3478" in text  # ok now, blocked in the "baseline"
    assert "tcp://192.0.2.10:5222" not in text  # ok in both


def test_all_ok_prints_no_table(saved: tuple[Path, Path]) -> None:
    base, _ = runs(saved)
    text = table(base, color=False)
    assert "┏" not in text
    assert "All ok: 3 targets and 1 control (--details lists them with their timings)" in text
    assert text.splitlines()[-1].startswith("✔ WhatsApp: messaging ok")


def test_a_big_table_lists_the_targets_that_need_a_look(saved: tuple[Path, Path]) -> None:
    """Past TABLE_ROWS rows that need a look, the rest are counted; --details lists every
    target; csv always does."""
    _, now = runs(saved)
    bad = next(t for t in now.targets if t.status == "blocked")
    ok = next(t for t in now.targets if t.status == "ok")
    many = [bad.model_copy(update={"url": f"stun://192.0.2.20:{1000 + i}"})
            for i in range(TABLE_ROWS + 50)]
    big = now.model_copy(update={"targets": [*many, ok]})
    text = table(big, color=False)
    assert "192.0.2.20:1000" in text and "192.0.2.20:1249" not in text
    assert f"Not listed: 50 more that need a look (past {TABLE_ROWS} rows" in text
    assert "192.0.2.20:1249" in table(big, color=False, details=True)
    rows = list(csv.reader(io.StringIO(render(big, "csv"))))
    assert len(rows) == 1 + len(now.network.controls) + len(big.targets)


def test_interrupted_says_what_was_not_measured(saved: tuple[Path, Path]) -> None:
    _, now = runs(saved)
    left = now.targets[0].model_copy(update={
        "status": "inconclusive", "reason": "target.interrupted",
        "detail": "not measured (interrupted)"})
    cut = now.model_copy(update={"interrupted": True, "targets": [left, *now.targets[1:]]})
    lines = table(cut, color=False).splitlines()
    assert lines[-3] == ("Interrupted: 1 of 3 targets not measured (target.interrupted); the "
                         "lines below count only what finished")
    assert lines[-2].startswith("Network:")


# --- no network ----------------------------------------------------------------------------


def offline(saved: tuple[Path, Path]) -> Run:
    """The censored run as it reads when every control failed."""
    _, now = runs(saved)
    control = now.network.controls[0].model_copy(update={
        "status": "blocked", "reason": "tcp.timeout", "detail": "tcp: no answer to SYN"})
    down = NetworkResult(status="inconclusive", reason="network.down",
                         detail="all 1 controls failed (tcp.timeout)", controls=[control])
    targets = [t.model_copy(update={"status": "inconclusive", "reason": "network.down"})
               if t.status != "ok" else t for t in now.targets]
    platforms = [p.model_copy(update={"status": "inconclusive", "reason": "network.down"})
                 for p in now.platforms]
    return now.model_copy(update={"network": down, "targets": targets,
                                  "platforms": platforms})


def test_no_network_is_one_sentence_and_no_table(saved: tuple[Path, Path]) -> None:
    run = offline(saved)
    text = table(run, color=False)
    assert "┏" not in text and "WhatsApp" not in text
    assert text.splitlines()[-1] == ("No connection: the control site could not be reached — "
                                     "check your connection and run again")


def test_no_network_with_details_shows_controls_as_failed(saved: tuple[Path, Path]) -> None:
    text = table(offline(saved), color=False, details=True)
    assert "✘ failed (tcp.timeout)" in text and "blocked (tcp.timeout)" not in text
    assert text.splitlines()[-1].startswith("No connection:")


def test_offline_sentence_counts_the_controls_tried(saved: tuple[Path, Path]) -> None:
    run = offline(saved)
    five = [run.network.controls[0].model_copy(update={"url": f"https://c{i}.example/"})
            for i in range(5)]
    untestable = five[0].model_copy(update={"status": "inconclusive",
                                            "reason": "target.untestable"})
    network = run.network.model_copy(update={"controls": [*five, untestable]})
    assert offline_sentence(run.model_copy(update={"network": network})) == (
        "No connection: none of the 5 control sites could be reached — check your connection "
        "and run again")
    assert offline_sentence(runs(saved)[1]) is None


def test_summary_is_the_closing_lines_alone(saved: tuple[Path, Path]) -> None:
    base, now = runs(saved)
    assert summary(now, color=False).splitlines() == [
        "Network: ok — 1 of 1 controls reachable", f"◐ {SUMMARY}"]
    # for a file or a pipe a line per platform, however narrow (a terminal wraps at words)
    assert summary(now, width=40, color=False).splitlines()[-1] == f"◐ {SUMMARY}"
    assert len(summary(now, width=40, color=True).splitlines()) > 2
    assert render(now, "summary", base).splitlines()[0] == f"Baseline: {base.started_at}"
    assert summary(offline(saved), color=False).splitlines()[-1].startswith("No connection:")


# --- columns and widths --------------------------------------------------------------------


def test_fit_gives_natural_widths_when_they_fit() -> None:
    assert fit([10, 20, 30], [5, 5, 5], [0, 1, 4], [0, 5, 10], 60) == [10, 20, 30]


def test_fit_never_goes_below_a_floor_and_fills_the_room() -> None:
    widths = fit([30, 40, 200], [18, 24, 19], [0, 2, 4], [0, 10, 30], 72)
    assert widths[0] >= 18 and widths[1] >= 24 and widths[2] >= 19
    assert sum(widths) == 72


def test_fit_widens_short_columns_before_sharing_the_rest() -> None:
    # the detail column gets its comfort (30) first, then the verdict its natural width
    assert fit([25, 300], [10, 10], [0, 4], [0, 30], 60) == [25, 35]
    assert fit([25, 300], [10, 10], [0, 4], [0, 50], 60) == [10, 50]


@pytest.mark.parametrize("width", WIDTHS)
def test_columns_follow_the_width(saved: tuple[Path, Path], width: int) -> None:
    base, now = runs(saved)
    text = table(now, base, width=width, color=False, details=True)
    assert max(len(line) for line in text.splitlines() if line[:1] in "┏┃┡│└") <= width
    headers = headers_of(text)
    if width >= WIDE:
        assert headers == ["platform / feature", "target", "verdict", "baseline", "RTT",
                           "rate / loss", "detail"]
    elif width >= NARROW:
        assert headers == ["target", "verdict", "rate / loss", "detail"]
        assert "baseline: ok" in text  # a changed baseline verdict, under the verdict
    else:
        assert headers == ["target", "verdict", "detail"]


@pytest.mark.parametrize("width", WIDTHS)
def test_no_column_is_narrower_than_its_shortest_word(saved: tuple[Path, Path],
                                                      width: int) -> None:
    """The words of every cell, checked against the width of its column (a column shrunk to
    nothing, as `┏┳┳━━━`, fails)."""
    base, now = runs(saved)
    text = table(now, base, width=width, color=False, details=True)
    widths = columns_of(text)
    rows = [line for line in text.splitlines() if line.startswith("│")]
    for i, w in enumerate(widths):
        words = [word for line in rows for word in line.strip("│").split("│")[i].split()]
        assert words and w >= min(len(word) for word in words), (i, w)
        assert w >= 8, (i, w, text)


def test_urls_fold_after_their_punctuation() -> None:
    target = TargetResult(platform="p", feature="f", status="blocked", reason="tcp.timeout",
                          url="https://media.chatter.example:38199/1mib", detail="x")
    text = table(run_of([target]), width=70, color=False)
    assert "https://media.chatter." in text and "\u2502example:38199/1mib" not in text


def test_terminal_width_follows_columns_when_not_a_terminal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "90")
    assert terminal_width() == 90
    monkeypatch.delenv("COLUMNS")
    assert terminal_width() == 160


# --- the figures beside the baseline -------------------------------------------------------


def test_table_beside_a_baseline(saved: tuple[Path, Path]) -> None:
    base, now = runs(saved)
    text = table(now, base, width=400, color=False, details=True)  # every cell on one line
    row = next(line for line in text.splitlines() if "stun://" in line)
    assert re.search(r"✘ blocked \(udp\.timeout\) +│ ok ", row)
    assert "130 kbit/s | 20.0 Mbit/s" in text
    assert "100% loss | 0% loss" in text
    assert "45 ms | 45 ms" in text
    assert ("Baseline: 2026-01-01T00:00:00Z; RTT and rate / loss columns: now | baseline"
            in text.splitlines())
    narrow = table(now, base, width=80, color=False)  # no such columns: no such note
    assert "Baseline: 2026-01-01T00:00:00Z" in narrow.splitlines()


def test_one_baseline_figure_per_row(saved: tuple[Path, Path]) -> None:
    """A throttled row judged against the baseline names the baseline's rate in its detail;
    the rate column then shows the run's figure alone."""
    base, now = saved
    result = CliRunner().invoke(app, ["report", str(now), "-b", str(base)],
                                env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "https://192.0.2.30/" in line)
    assert "below the baseline's 20.0 Mbit/s" in row
    assert "130 kbit/s" in row and "| 20.0 Mbit/s" not in row


def test_no_rtt_for_a_target_that_never_answered() -> None:
    """A resolver's answer is no RTT of the target: a TCP connect that timed out shows none."""
    dead = obs(sample(dns=ph(ms=12.0, answers=["192.0.2.9"]),
                      tcp=ph(ok=False, ms=5000.0, failure="timeout")))
    target = TargetResult(platform="p", feature="f", url="tcp://dead.example:443",
                          status="blocked", reason="tcp.timeout", detail="x", observation=dead)
    text = table(run_of([target]), width=160, color=False)
    row = next(line for line in text.splitlines() if "dead.example" in line)
    assert "12 ms" not in row and "ms" not in row.split("│")[4]
    assert "| 12 |" not in render(run_of([target]), "markdown")


def test_colours_only_when_asked(saved: tuple[Path, Path]) -> None:
    _, now = runs(saved)
    coloured = table(now, color=True)
    assert "\x1b[" in coloured and "udp.timeout" in coloured


# --- detail text written for people --------------------------------------------------------


def test_failure_messages_are_words_not_exception_text() -> None:
    """asyncio words a refused connect "Connect call failed ('127.0.0.66', 46527)": the detail
    says "connection refused", and no errno the table maps goes without words."""
    refused = ConnectionRefusedError(errno.ECONNREFUSED,
                                     "Connect call failed ('127.0.0.66', 46527)")
    assert F.classify_exception(refused) == (F.CONNECTION_REFUSED, "connection refused")
    assert set(F.ERRNO_WORDS) == set(F.ERRNO_FACTS)
    for code in F.ERRNO_FACTS:
        fact, message = F.classify_exception(OSError(code, "raw text ('192.0.2.1', 1)"))
        assert fact == F.ERRNO_FACTS[code] and "raw text" not in message
    wrapped = RuntimeError("httpx.ConnectError: [Errno 111] ...")
    wrapped.__cause__ = refused
    assert F.classify_exception(wrapped)[1] == "connection refused"
    assert F.classify_exception(asyncio.IncompleteReadError(b"", 10))[1] == "connection closed"


def test_one_timing_per_fact() -> None:
    timed = TcpFacts(ok=False, ms=5003.0, failure="timeout", error="no answer to SYN within 5 s")
    assert describe("tcp", timed) == "tcp: no answer to SYN within 5 s"
    untimed = TcpFacts(ok=False, ms=22.0, failure="connection_reset", error="connection reset")
    assert describe("tcp", untimed) == "tcp: connection reset after 22 ms"


# --- markdown, csv, report -b --------------------------------------------------------------


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


def test_report_of_two_files_names_each(saved: tuple[Path, Path]) -> None:
    base, now = saved
    result = CliRunner().invoke(app, ["report", str(base), str(now)])
    assert result.exit_code == 0, result.output
    assert f"== {base}" in result.stdout and f"== {now}" in result.stdout
