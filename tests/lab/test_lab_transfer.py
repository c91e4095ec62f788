"""Lab: censorship that lets the handshake through and spoils the transfer: throttling to about
128 kbit/s (htb + tbf on the censor's egress to the client) and a freeze after 16 KB (conntrack
byte counters), each aimed at its own server port."""

from __future__ import annotations

import pytest
from netns import SERVER_IP
from scenario import Lab, MakeLab, expect, expect_clean_baseline, server, target

pytestmark = pytest.mark.lab

BIG = "/1mib"  # the mock's 1 MiB body: far more than 128 kbit/s moves in the read window
THROTTLED = ("degraded", "http.throttled")


@pytest.fixture(scope="module")
def lab(make_lab: MakeLab) -> Lab:
    servers = [server(sid, "https", name=f"{sid}.lab.test")
               for sid in ("media", "video", "frozen", "page")]

    def targets(ports: dict[str, int]) -> list[dict[str, object]]:
        def url(sid: str, path: str) -> str:
            return f"https://{sid}.lab.test:{ports[sid]}{path}"

        return [
            target("media", url("media", BIG), address=SERVER_IP),  # judged against the baseline
            target("video", url("video", BIG), address=SERVER_IP,  # and against a threshold
                   expect={"min_throughput": "1Mbit/s"}),
            target("frozen", url("frozen", BIG), address=SERVER_IP),
            target("page", url("page", "/"), address=SERVER_IP),
        ]

    # 2 s, not the lab's 1 s: a policer drops most of a fresh connection's first flight, and
    # TCP's retransmission backoff (200, 400, 800 ms) then leaves a gap over 1 s that the https
    # layer rightly calls a stall at a 1 s timeout. Users run with 5 s.
    return make_lab(servers, targets, timeout="2s")


def test_baseline_without_rules_is_clean(lab: Lab) -> None:
    expect_clean_baseline(lab)


def test_throttled_to_128_kbit_is_http_throttled(lab: Lab) -> None:
    # One class per flow, as a DPI box polices each flow: the two must not share 128 kbit/s.
    run = lab.run(throttle=[(f"ip saddr {SERVER_IP} tcp sport {lab.ports[sid]}", "128kbit")
                            for sid in ("media", "video")])
    expect(lab, run, {"media": THROTTLED, "video": THROTTLED})


def test_freeze_after_16_kb_is_http_stall(lab: Lab) -> None:
    # Russia since mid-2025: 12-24 KB of a flow arrive, then nothing (the handshake counts too).
    flow = f"ip saddr {SERVER_IP} tcp sport {lab.ports['frozen']}"
    run = lab.run(nft=[f"{flow} ct reply bytes > 16384 drop"])
    expect(lab, run, {"frozen": ("blocked", "http.stall")})
