"""The classifier's rules one by one: thresholds, small samples, features, network, rejudging."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from builders import judge_subject, obs, ph, run_of

from probe import catalog, classify
from probe.catalog import Job
from probe.classify import Subject, combine
from probe.classify.udp import binomial_tail
from probe.metrics import metrics_of
from probe.observations import Observation, Sample
from probe.results import CatalogRef, Run, TargetResult, read_run
from probe.thresholds import DEFAULT, Thresholds

IP = "157.240.1.1"


def tcp(rtt: float = 40.0) -> Sample:
    return Sample(phases={"tcp": ph(ms=rtt, rtt_ms=rtt, address=IP, port=5222)})


def tcp_fail(failure: str = "timeout", ms: float = 5000.0) -> Sample:
    return Sample(phases={"tcp": ph(ok=False, ms=ms, failure=failure, address=IP, error=failure)})


def https(rate: float, size: int, rtt: float = 40.0, transfer_ms: float | None = None) -> Sample:
    took = transfer_ms if transfer_ms is not None else size * 8 / rate * 1000
    return Sample(phases={"tcp": ph(ms=rtt, rtt_ms=rtt, address=IP),
                          "tls": ph(ms=60.0, issuer="CN=CA", spki_sha256="aa"),
                          "http": ph(ms=took, status=200, bytes=size, transfer_ms=took,
                                     throughput=round(size * 8 / (took / 1000)))})


def stun(sent: int, lost: int) -> Sample:
    return Sample(phases={"stun": ph(ok=sent > lost, ms=50.0, sent=sent, lost=lost,
                                     answered=sent - lost, rtt_median_ms=50.0,
                                     failure=None if sent > lost else "timeout")})


def judge(url: str, observation: Observation, baseline: Observation | None = None,
          expect: dict[str, float] | None = None, th: Thresholds = DEFAULT) -> TargetResult:
    subject = Subject("app", "f", url, expect=expect or {})
    base = None
    if baseline is not None:
        base = run_of([judge_subject(Subject("app", "f", url), baseline)])
    return judge_subject(subject, observation, base, th)


TCP = "tcp://chat.example.org:5222"
WEB = "https://web.example.org/"
STUN = "stun://stun.example.org:3478"

# --- RTT --------------------------------------------------------------------------------------

RTT_CASES = [
    # (now ms, baseline ms, expect max_rtt ms, reason)
    (3.0, 1.0, None, "ok"),  # 3x, but 2 ms: not degraded
    (40.0, 30.0, None, "ok"),
    (300.0, 40.0, None, "latency.high"),
    (150.0, 90.0, None, "ok"),  # 60 ms more, but not twice
    (600.0, 550.0, None, "ok"),  # satellite on both runs
    (400.0, None, 300.0, "latency.high"),
    (250.0, None, 300.0, "ok"),
    (1400.0, None, None, "ok"),  # under the built-in ceiling
    (2000.0, None, None, "latency.high"),
    (2000.0, 1900.0, None, "ok"),  # a baseline says this link is always that slow
]


@pytest.mark.parametrize(("now", "before", "max_rtt", "reason"), RTT_CASES)
def test_rtt(now: float, before: float | None, max_rtt: float | None, reason: str) -> None:
    base = obs(*[tcp(before)] * 3) if before is not None else None
    result = judge(TCP, obs(*[tcp(now)] * 3), base, {"max_rtt_ms": max_rtt} if max_rtt else None)
    assert result.reason == reason, result.detail
    assert result.status == ("ok" if reason == "ok" else "degraded")


def test_rtt_is_the_median_of_samples() -> None:
    # one slow sample among three does not make the target slow
    result = judge(TCP, obs(tcp(40.0), tcp(900.0), tcp(42.0)), obs(*[tcp(40.0)] * 3))
    assert result.reason == "ok"


# --- throughput ---------------------------------------------------------------------------------


def test_fast_baseline_transfers_are_too_noisy_to_compare_against_a_fast_transfer() -> None:
    # baseline: 1 MB in 4 ms (2 Gbit/s, mostly timer noise); now 1 MB in 40 ms (200 Mbit/s):
    # neither transfer is long enough to measure, nothing is throttled
    result = judge(WEB, obs(*[https(200e6, 1 << 20)] * 3), obs(*[https(2e9, 1 << 20)] * 3))
    assert result.reason == "ok", result.detail


def test_fast_baseline_counts_as_a_lower_bound_against_a_slow_transfer() -> None:
    # baseline 1 MB in 4 ms: at least 1 MB per 200 ms (42 Mbit/s); now 150 kbit/s over 3 s
    result = judge(WEB, obs(*[https(150e3, 56_000)] * 3), obs(*[https(2e9, 1 << 20)] * 3))
    assert result.reason == "http.throttled", result.detail
    assert "150 kbit/s" in result.detail and "policer" in result.detail


def test_transfers_of_few_round_trips_measure_no_rate() -> None:
    # 30 KB over a 600 ms RTT link in 1.2 s is two round trips of slow start, not a rate
    result = judge(WEB, obs(*[https(200e3, 30_000, rtt=600.0)] * 3))
    assert result.reason == "ok", result.detail


def test_throughput_against_expect_and_builtin_floor() -> None:
    slow = obs(*[https(800e3, 1 << 20)] * 3)
    assert judge(WEB, slow).reason == "ok"  # above the built-in 200 kbit/s floor
    result = judge(WEB, slow, expect={"min_throughput_bps": 1e6})
    assert result.reason == "http.throttled" and "expect.min_throughput" in result.detail
    assert judge(WEB, obs(*[https(128e3, 200_000)] * 3)).reason == "http.throttled"


def settled(rate: float, size: int, baseline: Observation | None = None,
            expect: dict[str, float] | None = None) -> bool:
    """classify.settled after one sample of `rate`, as the runner asks after each sample."""
    target = {"url": WEB, **({"expect": {"min_throughput": f"{expect:.0f}bit/s"}} if expect else {})}
    document = {"version": 1, "platforms": {"app": {"features": {"f": [target]}}}}
    [job] = catalog.loads(json.dumps(document)).jobs()
    base = None
    if baseline is not None:
        base = classify.Baseline.of(run_of([judge_subject(Subject("app", "f", WEB), baseline)]))
    return classify.settled(job, obs(https(rate, size)), base)


def test_a_transfer_far_below_its_floor_settles_the_verdict() -> None:
    # the built-in floor is 200 kbit/s: 90 kbit/s is under half of it, 128 kbit/s is not
    assert settled(90e3, 200_000)
    assert not settled(128e3, 200_000)  # throttled, but the next samples may say otherwise
    assert not settled(5e6, 4 << 20)
    # the highest floor counts: 1 Mbit/s expected, 128 kbit/s measured
    assert settled(128e3, 200_000, expect=1e6)
    # a baseline of 20 Mbit/s: its floor is 5 Mbit/s; 2 Mbit/s is far below, 3 Mbit/s is not
    fast = obs(*[https(20e6, 8 << 20)] * 3)
    assert settled(2e6, 1 << 20, fast) and not settled(3e6, 1 << 20, fast)
    # a transfer of a few round trips measures no rate: nothing settled
    assert not settled(50e3, 600)


def test_throttled_detail_names_rate_baseline_and_rtt() -> None:
    result = judge(WEB, obs(*[https(140e3, 64_000, rtt=42.0)] * 3),
                   obs(*[https(20e6, 8 << 20, rtt=40.0)] * 3))
    assert result.status == "degraded"
    for text in ("140 kbit/s", "20.0 Mbit/s", "RTT not raised"):
        assert text in result.detail, result.detail


# --- loss -------------------------------------------------------------------------------------

LOSS_CASES = [
    # (sent, lost, baseline (sent, lost), expect max_loss, reason)
    (10, 3, None, None, "ok"),  # 30 % of 10: bad luck at 5 %
    (30, 10, None, None, "udp.loss"),
    (100, 1, None, None, "ok"),
    (3, 1, (3, 0), None, "ok"),
    (3, 2, None, None, "udp.loss"),  # 2 of 3 at 5 %: 0.7 % by chance
    (40, 12, (40, 10), None, "ok"),  # the baseline loses as much
    (40, 12, (40, 0), None, "udp.loss"),
    (40, 6, None, 0.02, "udp.loss"),  # the catalog allows only 2 %
    (40, 6, None, 0.2, "ok"),
]


@pytest.mark.parametrize(("sent", "lost", "before", "max_loss", "reason"), LOSS_CASES)
def test_loss(sent: int, lost: int, before: tuple[int, int] | None, max_loss: float | None,
              reason: str) -> None:
    base = obs(stun(*before)) if before else None
    result = judge(STUN, obs(stun(sent, lost)), base, {"max_loss": max_loss} if max_loss else None)
    assert result.reason == reason, result.detail


def test_binomial_tail() -> None:
    assert binomial_tail(0, 10, 0.05) == 1.0
    assert binomial_tail(3, 10, 0.05) == pytest.approx(0.0115, abs=1e-4)
    assert binomial_tail(1, 10, 0.0) == 0.0
    assert binomial_tail(11, 10, 0.5) == 0.0


def test_thresholds_are_arguments() -> None:
    strict = Thresholds(max_loss=0.0)
    assert judge(STUN, obs(stun(100, 1)), th=strict).reason == "udp.loss"


# --- samples that disagree ------------------------------------------------------------------

SAMPLE_CASES = [
    ([tcp(), tcp(), tcp()], ("ok", "ok")),
    ([tcp(), tcp(), tcp_fail()], ("degraded", "tcp.timeout")),
    ([tcp(), tcp_fail(), tcp_fail()], ("degraded", "tcp.timeout")),
    ([tcp_fail(), tcp_fail(), tcp_fail()], ("blocked", "tcp.timeout")),
    ([tcp_fail("host_unreachable", 30.0), tcp_fail("connection_reset", 30.0),
      tcp_fail("connection_reset", 30.0)], ("blocked", "tcp.reset")),
    # Silence yields to an answer at the same layer: a rate-limited reject.
    ([tcp_fail(), tcp_fail("connection_reset", 30.0), tcp_fail()], ("blocked", "tcp.reset")),
]


@pytest.mark.parametrize(("samples", "expected"), SAMPLE_CASES)
def test_samples_must_agree_to_block(samples: list[Sample], expected: tuple[str, str]) -> None:
    result = judge(TCP, obs(*samples))
    assert (result.status, result.reason) == expected
    if expected[0] == "degraded":
        failed = sum(1 for s in samples if not s.ok)
        assert f"{failed} of 3 samples failed" in result.detail


def test_mixed_failures_are_listed() -> None:
    samples, _ = SAMPLE_CASES[-1]
    assert "(tcp.timeout x2)" in judge(TCP, obs(*samples)).detail


def test_untestable_is_never_blocked() -> None:
    for failure in ("not_implemented", "address_unavailable", "local_limit"):
        result = judge(TCP, obs(tcp_fail(failure, 0.1)))
        assert (result.status, result.reason) == ("inconclusive", "target.untestable")


def test_remote_ipv6_network_unreachable_after_a_round_trip_is_still_a_block() -> None:
    sample = Sample(phases={"tcp": ph(ok=False, ms=45.0, failure="network_unreachable",
                                      address="2a03:2880::1")})
    assert judge(TCP, obs(sample)).reason == "tcp.unreachable"


def test_baseline_failing_differently_is_not_target_down() -> None:
    result = judge(TCP, obs(*[tcp_fail()] * 3), obs(*[tcp_fail("connection_refused", 20.0)] * 3))
    assert (result.status, result.reason) == ("blocked", "tcp.timeout")


def test_sni_swap_after_alert_to_both_names_is_not_filtering() -> None:
    sample = Sample(phases={"tcp": ph(address=IP), "tls": ph(ok=False, failure="tls_alert")})
    result = judge("tls://web.example.org:443",
                   obs(sample, sni_control=ph(sni="example.com", reply="alert")))
    assert result.reason == "tls.alert" and "refuses both" in result.detail


def test_other_addresses_connected_are_listed() -> None:
    result = judge(TCP, obs(*[tcp_fail()] * 3, other_addresses=ph(
        tried=["157.240.1.2", "157.240.1.3"], connected=["157.240.1.3"])))
    assert result.reason == "tcp.timeout"
    assert "157.240.1.3 connected" in result.detail


# --- network ----------------------------------------------------------------------------------


def control(ok: bool, domestic: bool = False, failure: str = "timeout") -> TargetResult:
    observation = obs(tcp()) if ok else obs(tcp_fail(failure, 0.1 if failure != "timeout" else 5000))
    subject = Subject(None, None, f"tcp://{IP}:{443 + domestic}", domestic=domestic)
    return judge_subject(subject, observation)


NETWORK_CASES = [
    ([], ("ok", "ok")),
    ([control(True), control(False)], ("ok", "ok")),
    ([control(False), control(False)], ("inconclusive", "network.down")),
    # untestable controls count neither way
    ([control(False), control(False, failure="address_unavailable")],
     ("inconclusive", "network.down")),
    ([control(False, failure="address_unavailable")], ("ok", "ok")),
    ([control(False), control(True, domestic=True)], ("degraded", "network.allowlist")),
    ([control(False), control(False, domestic=True)], ("inconclusive", "network.down")),
    ([control(True), control(False, domestic=True)], ("ok", "ok")),
]


@pytest.mark.parametrize(("controls", "expected"), NETWORK_CASES)
def test_network(controls: list[TargetResult], expected: tuple[str, str]) -> None:
    network = classify.judge_network(controls)
    assert (network.status, network.reason) == expected, network.detail


def test_allowlist_keeps_targets_blocked_and_says_so() -> None:
    network = classify.judge_network([control(False), control(True, domestic=True)])
    assert "allowlist" in network.detail
    targets = [judge(TCP, obs(*[tcp_fail()] * 3))]
    targets = classify.apply_network(network, targets)
    assert targets[0].status == "blocked"


# --- features and platforms ---------------------------------------------------------------------

COMBINE_CASES = [
    # (members, need, expected)
    ([("ok", "ok"), ("ok", "ok")], "all", ("ok", "ok")),
    ([("blocked", "udp.timeout"), ("blocked", "udp.timeout")], "all", ("blocked", "udp.timeout")),
    ([("ok", "ok"), ("blocked", "tcp.timeout")], "all", ("degraded", "partial")),
    ([("ok", "ok"), ("blocked", "tcp.timeout")], "any", ("ok", "ok")),
    ([("degraded", "http.throttled"), ("blocked", "tcp.timeout")], "any",
     ("degraded", "http.throttled")),
    ([("ok", "ok"), ("degraded", "http.throttled")], "all", ("degraded", "http.throttled")),
    ([("inconclusive", "network.down")] * 2, "all", ("inconclusive", "network.down")),
    ([("inconclusive", "target.down"), ("blocked", "tcp.reset")], "all", ("blocked", "tcp.reset")),
    ([("inconclusive", "target.down"), ("ok", "ok")], "all", ("ok", "ok")),
    ([], "all", ("inconclusive", "target.untestable")),
]


@pytest.mark.parametrize(("members", "need", "expected"), COMBINE_CASES)
def test_combine(members: list[tuple[Any, str]], need: str, expected: tuple[str, str]) -> None:
    assert combine(members, need) == expected


CATALOG = """
version: 1
settings: {timeout: 1s, attempts: 3}
controls:
  - tcp://192.0.2.1:443
  - url: tcp://192.0.2.2:443
    domestic: true
platforms:
  whatsapp:
    name: WhatsApp
    features:
      messaging:
        need: any
        targets:
          - tcp://192.0.2.10:5222
          - tcp://192.0.2.11:5222
      calls:
        - url: stun://192.0.2.20:3478
          expect: {max_loss: 10%}
      media:
        - url: https://192.0.2.30/
          expect: {max_rtt: 300ms, min_throughput: 1Mbit/s}
"""


def jobs() -> list[Job]:
    return list(catalog.loads(CATALOG).jobs())


def observations(world: str) -> dict[str, Observation]:
    """Per URL, what a run saw: 'honest' or 'censored' (calls blocked, media throttled, one
    chat address blackholed)."""
    honest = world == "honest"
    return {
        "tcp://192.0.2.1:443": obs(tcp(30.0)),
        "tcp://192.0.2.2:443": obs(tcp(10.0)),
        "tcp://192.0.2.10:5222": obs(*[tcp(40.0) if honest else tcp_fail()] * 3),
        "tcp://192.0.2.11:5222": obs(*[tcp(41.0)] * 3),
        "stun://192.0.2.20:3478": obs(stun(3, 0 if honest else 3)),
        "https://192.0.2.30/": obs(*[https(20e6 if honest else 130e3, 1 << 20 if honest
                                           else 60_000)] * 3),
    }


def live(world: str, baseline: Run | None = None) -> Run:
    done = [(j, observations(world)[j.target.url]) for j in jobs()]
    loaded = catalog.loads(CATALOG)
    needs = {(pid, fid): f.need for pid, p in loaded.catalog.platforms.items()
             for fid, f in p.features.items()}
    names = {pid: p.name for pid, p in loaded.catalog.platforms.items()}
    network, targets, features, platforms = classify.judge_run(done, needs, names,
                                                                  classify.Baseline.of(baseline))
    return Run(probe_version="t", started_at="s", finished_at="f",
               catalog=CatalogRef(path="x", sha256=""), network=network, targets=targets,
               features=features, platforms=platforms)


def test_features_and_platform_line() -> None:
    run = live("censored")
    verdicts = {f.feature: (f.status, f.reason) for f in run.features}
    assert verdicts == {"messaging": ("ok", "ok"), "calls": ("blocked", "udp.timeout"),
                        "media": ("degraded", "http.throttled")}
    messaging = next(f for f in run.features if f.feature == "messaging")
    assert messaging.need == "any" and "1 of 2 targets ok; 1 not: tcp.timeout" in messaging.detail
    [platform] = run.platforms
    assert platform.features == {"messaging": "ok", "calls": "blocked (udp.timeout)",
                                 "media": "degraded (http.throttled)"}
    assert (platform.status, platform.reason) == ("degraded", "partial")


def test_expect_is_saved_in_the_result() -> None:
    media = next(t for t in live("honest").targets if t.feature == "media")
    assert media.expect == {"max_rtt_ms": 300.0, "min_throughput_bps": 1e6}


def test_rejudge_gives_exactly_the_live_verdicts(tmp_path: Path) -> None:
    """Judge live against baseline X, save; rejudge the saved run against X: the same."""
    baseline_file = tmp_path / "base.json"
    baseline_file.write_text(live("honest").to_json())
    base = read_run(baseline_file)
    judged_live = live("censored", base)
    saved_file = tmp_path / "run.json"
    saved_file.write_text(judged_live.to_json())
    # judged without a baseline first, then again against X from the file alone
    plain = classify.rejudge(read_run(saved_file), None)
    again = classify.rejudge(plain, base, baseline_path=str(baseline_file))

    def verdicts(run: Run) -> list[Any]:
        rows = [(t.url, t.status, t.reason, t.detail)
                for t in run.network.controls + run.targets]
        rows += [(f.feature, f.status, f.reason, f.detail) for f in run.features]
        rows += [(p.platform, p.status, p.reason, p.features) for p in run.platforms]
        return rows + [(run.network.status, run.network.reason, run.network.detail)]

    assert verdicts(again) == verdicts(judged_live)
    assert again.baseline == str(baseline_file)
    throttled = next(t for t in again.targets if t.feature == "media")
    assert "130 kbit/s" in throttled.detail and "20.0 Mbit/s" in throttled.detail


def test_rejudge_against_a_baseline_where_the_target_was_down_too() -> None:
    censored = live("censored")
    down = classify.rejudge(censored, censored)  # everything that fails now failed "then"
    calls = next(t for t in down.targets if t.feature == "calls")
    assert (calls.status, calls.reason) == ("inconclusive", "target.down")


def test_metrics_of_a_saved_target_survive_json() -> None:
    media = next(t for t in live("censored").targets if t.feature == "media")
    again = TargetResult.model_validate(json.loads(media.model_dump_json()))
    assert metrics_of(again) == metrics_of(media)
    assert metrics_of(media).throughput_bps == pytest.approx(130e3, rel=0.01)


def test_stall_detail_names_the_bytes() -> None:
    stalled = Sample(phases={"tcp": ph(rtt_ms=40.0), "tls": ph(),
                             "http": ph(ok=False, failure="stall", bytes=16384)})
    result = judge(WEB, obs(*[stalled] * 3))
    assert (result.status, result.reason) == ("blocked", "http.stall")
    assert "16384 bytes" in result.detail
