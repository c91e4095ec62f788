"""`probe compare`: two runs saved to files in the test, compared target by target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import ph, sample
from typer.testing import CliRunner

from probe import catalog, classify, compare
from probe.cli import app
from probe.observations import Observation
from probe.results import CatalogRef, Run, read_run

CATALOG = """
version: 1
controls: [tcp://192.0.2.1:443]
platforms:
  whatsapp:
    name: WhatsApp
    features:
      messaging: [tcp://192.0.2.10:5222]
      calls: [stun://192.0.2.20:3478]
      media: [https://192.0.2.30/]
"""


def world(censored: bool) -> dict[str, Observation]:
    rate, size = (130e3, 60_000) if censored else (20e6, 1 << 20)
    took = size * 8 / rate * 1000
    https = sample(tcp=ph(ms=40.0, rtt_ms=40.0), tls=ph(ms=60.0),
                   http=ph(ms=took, bytes=size, transfer_ms=took, throughput=rate, status=200))
    stun = ph(ok=not censored, ms=50.0, failure="timeout" if censored else None, sent=3,
              lost=3 if censored else 0, rtt_median_ms=None if censored else 50.0)
    return {
        "tcp://192.0.2.1:443": Observation(samples=[sample(tcp=ph(rtt_ms=30.0))]),
        "tcp://192.0.2.10:5222": Observation(samples=[sample(tcp=ph(rtt_ms=45.0))]),
        "stun://192.0.2.20:3478": Observation(samples=[sample(stun=stun)]),
        "https://192.0.2.30/": Observation(samples=[https] * 3),
    }


def judged(censored: bool, started: str) -> Run:
    loaded = catalog.loads(CATALOG)
    done = [(j, world(censored)[j.target.url]) for j in loaded.jobs()]
    network, targets, features, platforms = classify.judge_run(
        done, {}, {"whatsapp": "WhatsApp"})
    return Run(probe_version="t", started_at=started, finished_at=started,
               catalog=CatalogRef(path="probes.yaml", sha256=""), network=network,
               targets=targets, features=features, platforms=platforms)


def test_json_transitions_and_deltas(saved: tuple[Path, Path]) -> None:
    document = json.loads(compare.render(read_run(saved[0]), read_run(saved[1]), "json"))
    assert document["schema"] == "probe.compare/1"
    rows = {(t["feature"] or "control"): t for t in document["targets"]}
    assert rows["calls"]["change"] == "worse"
    assert (rows["calls"]["before"]["status"], rows["calls"]["after"]["reason"]) == (
        "ok", "udp.timeout")
    assert rows["calls"]["before"]["loss"] == 0.0 and rows["calls"]["after"]["loss"] == 1.0
    assert rows["calls"]["delta"]["loss"] == 1.0
    media = rows["media"]
    assert media["change"] == "worse" and media["after"]["reason"] == "http.throttled"
    assert media["delta"]["throughput_bps"] == pytest.approx(130e3 - 20e6)
    assert rows["messaging"]["change"] == "same" and rows["control"]["control"] is True
    assert document["summary"] == {"same": 2, "worse": 2}


def test_reverse_is_better(saved: tuple[Path, Path]) -> None:
    document = json.loads(compare.render(read_run(saved[1]), read_run(saved[0]), "json"))
    assert {t["change"] for t in document["targets"] if t["feature"] == "calls"} == {"better"}


def test_added_and_removed_targets(saved: tuple[Path, Path]) -> None:
    before, after = read_run(saved[0]), read_run(saved[1])
    gone = after.targets.pop(0)
    document = compare.to_document(before, after)
    changes = {t["url"]: t["change"] for t in document["targets"]}
    assert changes[gone.url] == "removed"
    assert compare.to_document(after, before)["summary"].get("added") == 1


def test_table(saved: tuple[Path, Path]) -> None:
    text = compare.render(read_run(saved[0]), read_run(saved[1]), "table")
    assert "blocked (udp.timeout)" in text and "worse" in text
    assert "20.0M → 130k" in text
    assert "\x1b[" not in text  # plain when not a terminal
    lines = text.splitlines()  # the counts last, where the eye lands
    assert lines[-1] == ("Comparing 2026-01-01T00:00:00Z → 2026-01-02T00:00:00Z: 4 targets: "
                         "2 worse")
    assert lines[-2] == "Network: ok → ok"


def test_table_follows_the_width(saved: tuple[Path, Path]) -> None:
    before, after = read_run(saved[0]), read_run(saved[1])
    narrow = compare.table(before, after, width=80, color=False)
    assert "RTT ms" not in narrow and max(len(line) for line in narrow.splitlines()) <= 80
    assert "RTT ms" in compare.table(before, after, width=140, color=False)


def test_a_control_that_stopped_working_failed(saved: tuple[Path, Path]) -> None:
    before, after = read_run(saved[0]), read_run(saved[1])
    control = after.network.controls[0].model_copy(update={"status": "blocked",
                                                           "reason": "tcp.timeout"})
    after.network.controls[0] = control
    text = compare.table(before, after, width=140, color=False)
    assert "failed (tcp.timeout)" in text and "blocked (tcp.timeout)" not in text


def test_cli_compare(saved: tuple[Path, Path]) -> None:
    result = CliRunner().invoke(app, ["compare", str(saved[0]), str(saved[1]), "--format",
                                      "json"])
    assert result.exit_code == 1, result.output  # something got worse: scripts can alert
    assert json.loads(result.stdout)["summary"]["worse"] == 2
    same = CliRunner().invoke(app, ["compare", str(saved[1]), str(saved[1])])
    assert same.exit_code == 0, same.output
    better = CliRunner().invoke(app, ["compare", str(saved[1]), str(saved[0])])
    assert better.exit_code == 0 and "better" in better.output
