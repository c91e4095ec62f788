"""The E-model estimate (probe/emodel.py) against G.107's published points and its own rules."""

from __future__ import annotations

import dataclasses

import pytest

from probe.classify import emodel
from probe.classify.emodel import G711_PLC, POOR_MOS, POOR_R, R_DEFAULT, estimate, mos
from probe.wire.flow import FlowStats


@pytest.mark.parametrize(("r", "expected"), [
    (R_DEFAULT, 4.41),  # G.107: every default gives R = 93.2, MOS 4.41
    (90, 4.34), (80, 4.03), (70, 3.60), (60, 3.10), (50, 2.58),  # G.107 Table B.1 / G.109
    (0, 1.0), (-5, 1.0), (100, 4.5), (120, 4.5),
])
def test_mos_from_r(r: float, expected: float) -> None:
    assert mos(r) == pytest.approx(expected, abs=0.01)


def test_poor_threshold() -> None:
    assert POOR_R == 60 and POOR_MOS == 3.1


def test_a_clean_low_delay_path_sounds_good() -> None:
    quality = estimate(rtt_ms=20, jitter_ms=1, loss=0.0)
    assert quality.mos > 4.3 and quality.r > 90 and not quality.poor
    assert quality.causes == () and quality.summary() == f"MOS {quality.mos:.1f}"
    assert quality.codec == G711_PLC.name


def test_one_percent_loss_is_fine() -> None:
    quality = estimate(rtt_ms=100, jitter_ms=2, loss=0.01)
    assert not quality.poor and quality.mos > 4.0


def test_random_loss_lowers_mos_monotonically() -> None:
    scores = [estimate(40, 2, loss).mos for loss in (0.0, 0.1, 0.2, 0.3)]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 4
    # By hand, G.107 (7-29) with Ie = 0, Bpl = 25.1: Ie,eff = 95 x 10 / (10 + 25.1) = 27.07.
    assert emodel.loss_impairment(0.10) == pytest.approx(27.07, abs=0.01)
    assert not estimate(40, 2, 0.10).poor and estimate(40, 2, 0.20).poor


def test_bursty_loss_is_worse_than_random() -> None:
    random_loss = estimate(40, 2, 0.2, burst=1.0)
    bursty_loss = estimate(40, 2, 0.2, burst=3.0)
    assert bursty_loss.r < random_loss.r
    assert bursty_loss.causes[0].text == "20 % loss in bursts"


def test_burst_ratio_from_a_flow() -> None:
    # 250 requests, 25 lost one at a time: random-looking loss.
    assert emodel.burst_ratio(0.1, lost=25, bursts=25) == 1.0
    # 25 lost in 5 runs of 5 at 10 % loss: mean burst 5, random would give 1/0.9: BurstR 4.5.
    assert emodel.burst_ratio(0.1, lost=25, bursts=5) == pytest.approx(4.5)
    assert emodel.burst_ratio(0.0, lost=0, bursts=0) == 1.0
    assert emodel.burst_ratio(1.0, lost=10, bursts=1) == 1.0


def test_delay_lowers_r() -> None:
    near = estimate(rtt_ms=40, jitter_ms=0, loss=0.0)
    far = estimate(rtt_ms=800, jitter_ms=0, loss=0.0)  # 400 ms one way, plus the codec's 20
    assert far.r < near.r - 25
    assert far.causes[0].what == "delay" and far.causes[0].text == "800 ms round trip"
    # Cole & Rosenbluth: Id(420) = 0.024 x 420 + 0.11 x (420 - 177.3) = 36.78.
    assert emodel.delay_impairment(420) == pytest.approx(36.777, abs=0.001)
    assert emodel.delay_impairment(100) == pytest.approx(2.4)
    satellite = estimate(rtt_ms=600, jitter_ms=5, loss=0.0)  # high but stable: not poor
    assert not satellite.poor


def test_jitter_counts_through_the_jitter_buffer() -> None:
    assert emodel.one_way_delay_ms(100, 40) == 50 + 80 + 20
    calm = estimate(rtt_ms=200, jitter_ms=0, loss=0.0)
    jittery = estimate(rtt_ms=200, jitter_ms=60, loss=0.0)
    assert jittery.r < calm.r
    assert [c.what for c in jittery.causes][:1] == ["jitter"]


def test_summary_names_causes_costliest_first() -> None:
    quality = estimate(rtt_ms=40, jitter_ms=41, loss=0.28)
    assert quality.poor
    assert quality.summary() == f"MOS {quality.mos:.1f}: 28 % loss, 41 ms jitter"
    assert quality.summary().startswith("MOS 2.1")
    assert [c.r_points for c in quality.causes] == sorted(
        (c.r_points for c in quality.causes), reverse=True)
    assert estimate(40, 0, 0.008).causes[0].text == "0.8 % loss"
    assert estimate(40, 0, 0.004).causes == ()  # 1.49 R points: not worth naming


CLEAN = FlowStats(
    sent=250, answered=250, late=0, lost=0, loss=0.0, duplicates=0, malformed=0,
    error_responses=0, error_code=None, icmp_errors=0, icmp_failure=None, loss_bursts=0,
    max_burst=0, rtt_min_ms=20.0, rtt_p50_ms=30.0, rtt_p90_ms=40.0, rtt_p99_ms=50.0,
    rtt_max_ms=60.0, jitter_ms=3.0, bytes_sent=40_000, bytes_received=15_000, span_s=4.98,
    first_answer_s=0.03, silent_after_packets=None, silent_after_bytes=None,
    silent_after_bytes_received=None, silent_after_s=None, pattern="+250", cutoff=False,
    answered_per_s=(50,) * 5, ended="complete")


def stats(**facts: object) -> FlowStats:
    return dataclasses.replace(CLEAN, **facts)  # type: ignore[arg-type]


def test_from_flow() -> None:
    clean = emodel.from_flow(stats())
    assert clean is not None and not clean.poor
    gurgling = emodel.from_flow(stats(answered=180, lost=70, late=5, loss=0.28, loss_bursts=50,
                                      max_burst=4, jitter_ms=27.0))
    assert gurgling is not None and gurgling.poor and gurgling.loss == 0.28
    assert gurgling.burst_ratio == pytest.approx(70 / 50 * 0.72)
    assert emodel.from_flow(stats(answered=0, lost=250, loss=1.0, rtt_p50_ms=None)) is None
    single = emodel.from_flow(stats(answered=1, lost=249, loss=0.996, jitter_ms=None))
    assert single is not None and single.poor
