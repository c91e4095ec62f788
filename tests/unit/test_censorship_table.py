"""Every row of both tables in CENSORSHIP.md, as (observations, baseline) -> verdict, no network.

Observations are built by hand from the facts the layers record (names read from
probe/layers/*.py). The look-alike rows must never come out `blocked`.
"""

from __future__ import annotations

from typing import Any

import pytest
from builders import Facts, judge_subject, obs, ph, run_of

from probe import classify
from probe.classify import Subject
from probe.observations import Observation, Sample
from probe.results import Run, TargetResult

# --- builders --------------------------------------------------------------------------------

IP = "157.240.1.1"


def dns_ok(name: str = "web.example.org", answers: tuple[str, ...] = (IP,), **facts: Any) -> Facts:
    return ph(ms=3.0, name=name, answers=list(answers), crosscheck_answers=list(answers),
              **facts)


def tcp_ok(rtt: float = 40.0, address: str = IP) -> Facts:
    return ph(ms=rtt + 1, rtt_ms=rtt, address=address, port=443)


def tls_ok(issuer: str = "CN=Platform CA", spki: str = "aa") -> Facts:
    return ph(ms=80.0, sni="web.example.org", version="TLSv1.3", issuer=issuer,
              subject="CN=web.example.org", spki_sha256=spki)


def http_ok(rate: float = 50e6, size: int = 1 << 20, status: int = 200, **facts: Any) -> Facts:
    transfer_ms = size * 8 / rate * 1000
    return ph(ms=transfer_ms, status=status, bytes=size, transfer_ms=transfer_ms,
              throughput=round(rate), ttfb_ms=40.0, **facts)


def https(rtt: float = 40.0, rate: float = 50e6, size: int = 1 << 20, **tls: Any) -> Sample:
    return Sample(phases={"dns": dns_ok(), "tcp": tcp_ok(rtt), "tls": tls_ok(**tls),
                          "http": http_ok(rate, size)})


def failing(layer: str, failure: str, before: dict[str, Facts] | None = None,
            **facts: Any) -> Sample:
    phases = dict(before if before is not None else {"dns": dns_ok()})
    phases[layer] = ph(ok=False, ms=facts.pop("ms", 5000.0), failure=failure,
                       error=facts.pop("error", failure), **facts)
    return Sample(phases=phases)


def tls_failing(failure: str) -> Sample:
    return failing("tls", failure, {"dns": dns_ok(), "tcp": tcp_ok()}, sni="web.example.org")


def stun(sent: int, lost: int, rtt: float = 60.0, ok: bool | None = None,
         failure: str | None = None) -> Sample:
    answered = sent - lost
    works = answered > 0 if ok is None else ok
    phase = ph(ok=works, ms=rtt if works else 5000.0, failure=None if works else
               (failure or "timeout"), sent=sent, answered=answered, lost=lost,
               loss=lost / sent, rtt_ms=[rtt] * answered,
               rtt_median_ms=rtt if answered else None)
    return Sample(phases={"dns": dns_ok("stun.example.org"), "stun": phase})


def target(url: str, observation: Observation, baseline: Run | None = None,
           expect: dict[str, float] | None = None, platform: str | None = "app",
           feature: str | None = "web") -> TargetResult:
    subject = Subject(platform, feature, url, expect=expect or {})
    return judge_subject(subject, observation, baseline)


def baseline_of(url: str, observation: Observation) -> Run:
    return run_of([target(url, observation)])


WEB = "https://web.example.org/"
TLS = "tls://web.example.org:443"
QUIC = "quic://web.example.org:443"
STUN = "stun://stun.example.org:3478"
TCP = "tcp://chat.example.org:5222"

def call(sent: int = 250, answered: int = 250, rtt: float = 60.0, jitter: float = 2.0,
         bursts: int = 0, per_second: list[int] | None = None, cut_after: int | None = None,
         fresh: int | None = None) -> Sample:
    """A call-like flow's stun facts (probe/layers/stun.py writes these)."""
    lost = sent - answered
    facts: dict[str, Any] = {
        "sent": sent, "answered": answered, "lost": lost, "loss": lost / sent, "late": 0,
        "call": True, "rate": 50.0, "size": 160, "rtt_median_ms": rtt if answered else None,
        "jitter_ms": jitter, "loss_bursts": bursts,
        "max_burst": lost if bursts == 1 else min(lost, 3),
        "answered_per_s": per_second or [answered // 5] * 5, "pattern": f"+{answered}",
    }
    if cut_after is not None:
        facts.update(silent_after_packets=cut_after, silent_after_bytes=cut_after * 160,
                     silent_after_s=cut_after / 50, fresh_flow_sent=5 if fresh is not None
                     else None, fresh_flow_answered=fresh)
        phase = ph(ok=False, failure="cutoff", ms=6000.0, error="answered, then silent", **facts)
    else:
        phase = ph(ok=answered > 0, ms=rtt, failure=None if answered else "timeout", **facts)
    return Sample(phases={"dns": dns_ok("stun.example.org"), "stun": phase})


# --- techniques ------------------------------------------------------------------------------

TECHNIQUES: dict[str, tuple[str, Observation, Observation | None, tuple[str, str], str]] = {
    # name: (url, observation, baseline observation, (status, reason), text in detail)
    "resolver says NXDOMAIN": (
        WEB, obs(*[failing("dns", "nxdomain", {}, name="web.example.org",
                           crosscheck_answers=[IP], ms=20.0)] * 3),
        None, ("blocked", "dns.nxdomain"), IP),
    "resolver answers a sinkhole address": (
        WEB, obs(*[Sample(phases={"dns": ph(
            name="web.example.org", answers=["10.10.34.34"], crosscheck_answers=[IP],
            cert_valid_for_name=False, cert_failure="timeout"),
            "tcp": ph(ok=False, ms=5000.0, failure="timeout", address="10.10.34.34")})] * 3),
        None, ("blocked", "dns.bogon"), "10.10.34.34"),
    "on-path DNS injection": (
        WEB, obs(*[Sample(phases={"dns": ph(
            name="web.example.org", answers=["31.13.64.9"], first_answers=["31.13.64.9"],
            injected=True, later_answers=[IP], cert_valid_for_name=False,
            cert_failure="untrusted_certificate"),
            "tcp": tcp_ok(address="31.13.64.9"),
            "tls": ph(ok=False, failure="untrusted_certificate")})] * 3),
        None, ("blocked", "dns.mismatch"), "injection"),
    "IP blackhole": (
        TCP, obs(*[failing("tcp", "timeout", address=IP)] * 3,
                 other_addresses=ph(ok=False, failure="timeout", tried=["157.240.1.2"],
                                    connected=[])),
        obs(Sample(phases={"dns": dns_ok(), "tcp": tcp_ok()})),
        ("blocked", "tcp.timeout"), "157.240.1.2"),
    "reject at connect: RST": (
        TCP, obs(*[failing("tcp", "connection_refused", ms=40.0)] * 3), None,
        ("blocked", "tcp.reset"), "3 samples"),
    "reject at connect: ICMP prohibited": (
        TCP, obs(*[failing("tcp", "host_unreachable", ms=40.0, address=IP)] * 3), None,
        ("blocked", "tcp.unreachable"), "host_unreachable"),
    "reject at connect, ICMP rate-limited by the censor's kernel": (
        TCP, obs(failing("tcp", "host_unreachable", ms=40.0, address=IP),
                 *[failing("tcp", "timeout", ms=1000.0, address=IP)] * 2),
        None, ("blocked", "tcp.unreachable"), "tcp.timeout x2"),
    "SNI -> RST": (
        TLS, obs(*[tls_failing("connection_reset")] * 3,
                 sni_control=ph(ms=82.0, sni="example.com", reply="server_hello")),
        None, ("blocked", "tls.sni_filtered"), "example.com got a ServerHello"),
    "SNI -> silent drop": (
        WEB, obs(*[tls_failing("timeout")] * 3,
                 sni_control=ph(ms=81.0, sni="example.com", reply="server_hello")),
        None, ("blocked", "tls.sni_filtered"), "tls.timeout on every sample"),
    "residual block (control SNI taken first)": (
        TLS, obs(*[tls_failing("timeout")] * 3,
                 sni_control=ph(ms=80.0, sni="example.com", reply="server_hello",
                                before_samples=True)),
        None, ("blocked", "tls.sni_filtered"), "SNI control"),
    "TLS interception": (
        WEB, obs(*[tls_failing("untrusted_certificate")] * 3,
                 certificate=ph(issuer="CN=Qaznet Trust Network", subject="CN=web.example.org")),
        obs(https()), ("blocked", "tls.untrusted"), "Qaznet Trust Network"),
    "block page": (
        WEB, obs(*[Sample(phases={"dns": dns_ok(), "tcp": tcp_ok(), "tls": tls_ok(),
                                  "http": ph(ok=False, failure="http_status", status=403,
                                             bytes=512, error="HTTP 403")})] * 3),
        None, ("blocked", "http.status"), "403"),
    "block page by redirect": (
        WEB, obs(*[Sample(phases={"dns": dns_ok(), "tcp": tcp_ok(), "tls": tls_ok(),
                                  "http": http_ok(size=200, status=302,
                                                  location_host="blocked.isp.example")})] * 3),
        obs(https()), ("blocked", "http.status"), "blocked.isp.example"),
    "throttling by dropping": (
        WEB, obs(*[https(rtt=41.0, rate=140_000, size=48_000)] * 3),
        obs(*[https(rtt=40.0, rate=40e6, size=8 << 20)] * 3),
        ("degraded", "http.throttled"), "policer"),
    "throttling by queueing": (
        WEB, obs(*[https(rtt=400.0, rate=1e6, size=1 << 20)] * 3),
        obs(*[https(rtt=40.0, rate=40e6, size=8 << 20)] * 3),
        ("degraded", "http.throttled"), "shaper"),
    "freeze after ~16 KB": (
        WEB, obs(*[Sample(phases={"dns": dns_ok(), "tcp": tcp_ok(), "tls": tls_ok(),
                                  "http": ph(ok=False, failure="stall", bytes=16384, status=200,
                                             error="transfer stalled: 16384 body bytes, then "
                                                   "nothing for 5 s")})] * 3),
        None, ("blocked", "http.stall"), "16384"),
    "QUIC blocked, TCP fine": (
        QUIC, obs(*[failing("quic", "timeout", server_packet=False)] * 3,
                  version_negotiation=ph(ok=False, failure="timeout",
                                         error="no Version Negotiation within 5.0 s")),
        None, ("blocked", "quic.timeout"), "version-negotiation ping unanswered"),
    "QUIC blocked by SNI": (
        QUIC, obs(*[failing("quic", "timeout", server_packet=False)] * 3,
                  version_negotiation=ph(ms=60.0, versions=["0x00000001"])),
        None, ("blocked", "quic.sni_filtered"), "version-negotiation ping without SNI answered"),
    "STUN / relay UDP blocked": (
        STUN, obs(stun(3, 3)), obs(stun(3, 0)), ("blocked", "udp.timeout"), "timeout"),
    "lossy UDP": (
        STUN, obs(stun(40, 12)), obs(stun(40, 0)), ("degraded", "udp.loss"), "12 of 40"),
    "UDP cut-off": (
        STUN, obs(stun(80, 60, ok=False, failure="cutoff")), None,
        ("blocked", "udp.cutoff"), "cutoff"),
    "flow freeze after N packets": (
        STUN, obs(call(answered=13, cut_after=13, fresh=5)), obs(call()),
        ("blocked", "udp.cutoff"), "the flow is frozen, not the address"),
    "calls gurgle": (
        STUN, obs(call(answered=180, jitter=27.0, bursts=60)), obs(call()),
        ("degraded", "call.poor"), "a call would sound poor: MOS"),
    "QUIC filtered by SNI": (
        QUIC, obs(*[failing("quic", "timeout", server_packet=False)] * 3,
                  quic_control=ph(ms=30.0, sni="example.com", before_samples=True,
                                  server_packet=True),
                  version_negotiation=ph(ms=60.0, versions=["0x00000001"])),
        None, ("blocked", "quic.sni_filtered"), "QUIC control: a handshake with SNI example.com"),
    "QUIC v1 dropped (the harmless name fails too)": (
        QUIC, obs(*[failing("quic", "timeout", server_packet=False)] * 3,
                  quic_control=ph(ok=False, failure="timeout", sni="example.com",
                                  error="no server packet"),
                  version_negotiation=ph(ms=60.0, versions=["0x00000001"])),
        None, ("blocked", "quic.timeout"), "QUIC v1 is dropped"),
    "first-packet allowlist (payload after connect dropped)": (
        TLS, obs(*[tls_failing("timeout")] * 3,
                 sni_control=ph(ok=False, failure="timeout", sni="example.com",
                                error="no ServerHello")),
        None, ("blocked", "tls.timeout"), "failed too"),
}


# Techniques seen only across a run's targets (probe/classify/calls.py): (controls, targets)
# as (url, observation) pairs, the target judged, its expected verdict and words.
Pairs = list[tuple[str, Observation]]


def _quic_answered() -> Observation:
    return obs(Sample(phases={"dns": dns_ok("quic.example.net"),
                              "quic": ph(ms=30.0, server_packet=True)}))


RUN_TECHNIQUES: dict[str, tuple[Pairs, Pairs, tuple[str, str], str]] = {
    "STUN classified on any address": (
        [("stun://stun.example.net:19302", obs(stun(3, 3))),
         ("quic://quic.example.net:443", _quic_answered())],
        [(STUN, obs(call(answered=0))), (TCP, obs(Sample(phases={"dns": dns_ok(),
                                                                   "tcp": tcp_ok()})))],
        ("blocked", "udp.stun_filtered"), "whatever the server"),
    "encrypted UDP dropped": (
        [("stun://stun.example.net:19302", obs(stun(3, 3))),
         ("https://example.com/", obs(https()))],
        [(STUN, obs(call(answered=0))),
         ("quic://web.example.org:443", obs(*[failing("quic", "timeout")] * 3)),
         ("turn://relay.example.org:443?transport=tcp",
          obs(Sample(phases={"dns": dns_ok("relay.example.org"), "tcp": tcp_ok(),
                             "turn": ph(ms=50.0, transport="tcp", error_code=401, realm=True,
                                        nonce=True)})))],
        ("blocked", "udp.timeout"), "only TCP relays can carry a call; a TCP relay works"),
}


@pytest.mark.parametrize("name", list(RUN_TECHNIQUES))
def test_run_technique(name: str) -> None:
    controls, targets, expected, text = RUN_TECHNIQUES[name]
    judged_controls = [target(u, o, platform=None, feature=None) for u, o in controls]
    judged = [target(u, o, feature="calls" if i == 0 else "other")
              for i, (u, o) in enumerate(targets)]
    _, results, features, _ = classify.judge_groups(
        classify.judge_network(judged_controls), judged, {}, {"app": "App"})
    first = results[0]
    assert (first.status, first.reason) == expected, first.detail
    assert text in first.detail, first.detail
    calls = next(f for f in features if f.feature == "calls")
    assert calls.status == "blocked"


@pytest.mark.parametrize("name", list(TECHNIQUES))
def test_technique(name: str) -> None:
    url, observation, base, expected, text = TECHNIQUES[name]
    baseline = baseline_of(url, base) if base is not None else None
    result = target(url, observation, baseline)
    assert (result.status, result.reason) == expected, result.detail
    assert text in result.detail, result.detail


# --- look-alikes -----------------------------------------------------------------------------

LOOKALIKES: dict[str, tuple[str, Observation, Observation | None, dict[str, float], tuple[str, str]]] = {
    "server down everywhere": (
        TCP, obs(*[failing("tcp", "timeout")] * 3), obs(*[failing("tcp", "timeout")] * 3), {},
        ("inconclusive", "target.down")),
    "server down everywhere (TLS)": (
        TLS, obs(*[tls_failing("timeout")] * 3, sni_control=ph(sni="example.com",
                                                               reply="server_hello")),
        obs(*[tls_failing("timeout")] * 3), {}, ("inconclusive", "target.down")),
    "ordinary 1 % loss": (
        STUN, obs(stun(100, 1)), None, {}, ("ok", "ok")),
    "ordinary 1 % loss, 3 requests, one lost": (
        STUN, obs(stun(3, 1)), obs(stun(3, 0)), {}, ("ok", "ok")),
    "high but stable latency (satellite)": (
        WEB, obs(*[https(rtt=r, rate=8e6) for r in (550.0, 600.0, 580.0)]),
        obs(*[https(rtt=r, rate=8e6) for r in (520.0, 560.0, 600.0)]), {}, ("ok", "ok")),
    "high but stable latency (satellite), no baseline": (
        WEB, obs(*[https(rtt=r, rate=8e6) for r in (550.0, 600.0, 580.0)]), None, {},
        ("ok", "ok")),
    "no IPv6 on the host": (
        TCP, obs(*[failing("tcp", "network_unreachable", ms=0.1, address="2001:db8::1",
                           error="Network is unreachable")] * 3), None, {},
        ("inconclusive", "target.untestable")),
    "CDN answers differ": (
        WEB, obs(*[Sample(phases={"dns": ph(name="web.example.org", answers=["23.1.2.3"],
                                            crosscheck_answers=[IP], cert_valid_for_name=True),
                                  "tcp": tcp_ok(address="23.1.2.3"), "tls": tls_ok(),
                                  "http": http_ok()})] * 3), None, {}, ("ok", "ok")),
    "a few seconds' outage": (
        TCP, obs(failing("tcp", "timeout"), Sample(phases={"dns": dns_ok(), "tcp": tcp_ok()}),
                 Sample(phases={"dns": dns_ok(), "tcp": tcp_ok()})), None, {},
        ("degraded", "tcp.timeout")),
    "a busy public STUN server (rate-limited)": (
        STUN, obs(call(answered=26, per_second=[5, 5, 6, 5, 5], bursts=25)),
        obs(call(answered=26, per_second=[5, 5, 5, 6, 5], bursts=25)), {}, ("ok", "ok")),
    "a busy public STUN server, no baseline": (
        STUN, obs(call(answered=26, per_second=[5, 5, 6, 5, 5], bursts=25)), None, {},
        ("ok", "ok")),
    "ordinary 1 % loss on a call": (
        STUN, obs(call(answered=247, bursts=3)), None, {}, ("ok", "ok")),
    "platform-side change: new CA": (
        WEB, obs(*[https(issuer="CN=New Public CA", spki="bb")] * 3), obs(https()), {},
        ("ok", "ok")),
    "platform-side change: new endpoint address": (
        WEB, obs(*[Sample(phases={"dns": ph(name="web.example.org", answers=["31.13.1.1"],
                                            cert_valid_for_name=True),
                                  "tcp": tcp_ok(address="31.13.1.1"), "tls": tls_ok(),
                                  "http": http_ok()})] * 3),
        obs(https()), {}, ("ok", "ok")),
}


@pytest.mark.parametrize("name", list(LOOKALIKES))
def test_lookalike_is_never_blocked(name: str) -> None:
    url, observation, base, expect, expected = LOOKALIKES[name]
    baseline = baseline_of(url, base) if base is not None else None
    result = target(url, observation, baseline, expect)
    assert result.status != "blocked", result.detail
    assert (result.status, result.reason) == expected, result.detail


def test_lookalike_outage_says_how_many_samples_failed() -> None:
    _, observation, _, _, _ = LOOKALIKES["a few seconds' outage"]
    assert "1 of 3 samples failed" in target(TCP, observation).detail


def test_lookalike_new_ca_is_noted() -> None:
    _, observation, base, _, _ = LOOKALIKES["platform-side change: new CA"]
    result = target(WEB, observation, baseline_of(WEB, base))
    assert "New Public CA" in result.detail and "not interception" in result.detail


def test_lookalike_satellite_is_latency_high_only_against_a_lower_baseline_or_max_rtt() -> None:
    _, observation, _, _, _ = LOOKALIKES["high but stable latency (satellite)"]
    low = baseline_of(WEB, obs(*[https(rtt=40.0, rate=8e6)] * 3))
    assert target(WEB, observation, low).reason == "latency.high"
    assert target(WEB, observation, expect={"max_rtt_ms": 300.0}).reason == "latency.high"


def test_lookalike_no_network_at_all() -> None:
    dead = obs(*[failing("tcp", "timeout", {}, address="93.184.216.34")] * 3)
    controls = [target("tcp://93.184.216.34:443", dead, platform=None, feature=None),
                target("https://93.184.215.14/", dead, platform=None, feature=None)]
    network = classify.judge_network(controls)
    assert (network.status, network.reason) == ("inconclusive", "network.down")
    targets = [target(TCP, obs(*[failing("tcp", "timeout")] * 3)),
               target(STUN, obs(stun(3, 3))),
               target(WEB, obs(https()))]
    targets = classify.apply_network(network, targets)
    assert [(t.status, t.reason) for t in targets] == [
        ("inconclusive", "network.down"), ("inconclusive", "network.down"), ("ok", "ok")]
    assert targets[0].detail.startswith("tcp.timeout")


def _portal_control(url: str, name: str) -> TargetResult:
    sample = Sample(phases={
        "dns": ph(name=name, answers=["192.168.88.1"]), "tcp": tcp_ok(address="192.168.88.1"),
        "tls": ph(ok=False, failure="hostname_mismatch",
                  error="certificate is for portal.hotel.example")})
    return target(url, obs(sample, sample, sample), platform=None, feature=None)


def test_lookalike_captive_portal() -> None:
    controls = [_portal_control("https://example.com/", "example.com"),
                _portal_control("https://example.net/", "example.net")]
    network = classify.judge_network(controls)
    assert (network.status, network.reason) == ("inconclusive", "network.captive")
    assert "192.168.88.1" in network.detail
    targets = [_portal_control(WEB, "web.example.org"), target(STUN, obs(stun(3, 3)))]
    targets[0].platform = "app"
    targets = classify.apply_network(network, targets)
    assert {(t.status, t.reason) for t in targets} == {("inconclusive", "network.captive")}


def test_lookalike_captive_portal_by_redirect_on_controls() -> None:
    redirect = Sample(phases={"dns": dns_ok("example.com"), "tcp": tcp_ok(), "tls": tls_ok(),
                              "http": http_ok(size=300, status=302,
                                              location_host="login.portal.invalid")})
    controls = [target("https://example.com/", obs(redirect), platform=None, feature=None)]
    assert controls[0].status == "ok"  # the control itself answered
    network = classify.judge_network(controls)
    assert network.reason == "network.captive" and "login.portal.invalid" in network.detail


def test_technique_rows_cover_the_document() -> None:
    """One row per line of each CENSORSHIP.md table (a guard against a row left out)."""
    from pathlib import Path

    # the steering repository's shared/ folder, beside the project's checkout
    text = Path(__file__).resolve().parents[3] / "shared" / "CENSORSHIP.md"
    if not text.exists():
        pytest.skip(f"{text} is not beside this checkout")
    lines = text.read_text(encoding="utf-8").splitlines()
    techniques = _table_rows(lines, "| technique |")
    lookalikes = _table_rows(lines, "| condition |")
    # techniques: the two "reject" signatures and the second "block page"/"QUIC" rows are
    # extra cases; the tests for the network-level look-alikes are the functions above
    assert len(TECHNIQUES) + len(RUN_TECHNIQUES) >= len(techniques), (
        len(TECHNIQUES), len(RUN_TECHNIQUES), len(techniques))
    network_level = {"no network at all", "captive portal"}
    named = {row.split("|")[1].strip() for row in lookalikes}
    covered = {n.split(" (")[0].split(":")[0] for n in LOOKALIKES} | network_level
    assert {n.split(" (")[0] for n in named} <= covered, named - covered


def _table_rows(lines: list[str], header: str) -> list[str]:
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows
