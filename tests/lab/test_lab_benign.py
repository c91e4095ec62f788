"""Lab: look-alikes that are not censorship: ordinary 1 % loss, a server that is down in the
baseline too, and a network where even the controls are dead."""

from __future__ import annotations

import pytest
from netns import SERVER_IP
from scenario import Lab, MakeLab, expect, server, target

pytestmark = pytest.mark.lab

UDP_REQUESTS = 40  # 1 % loss over 40 requests: more than 10 % lost has p ~ 1e-5
WORKING = ("tcp", "tls", "web", "stun")


@pytest.fixture(scope="module")
def lab(make_lab: MakeLab) -> Lab:
    servers = [
        server("tcp", "tcp"),
        server("tls", "tls", name="tls.lab.test"),
        server("web", "https", name="web.lab.test"),
        server("stun", "stun"),
        server("gone", "tcp", behaviour="refuse"),  # down for everyone, baseline included
    ]

    def targets(ports: dict[str, int]) -> list[dict[str, object]]:
        return [
            target("tcp", f"tcp://{SERVER_IP}:{ports['tcp']}"),
            target("tls", f"tls://tls.lab.test:{ports['tls']}", address=SERVER_IP),
            target("web", f"https://web.lab.test:{ports['web']}/", address=SERVER_IP),
            target("stun", f"stun://{SERVER_IP}:{ports['stun']}", attempts=UDP_REQUESTS,
                   expect={"max_loss": "10%"}),
            target("gone", f"tcp://{SERVER_IP}:{ports['gone']}"),
        ]

    # 2 s: one lost SYN costs TCP a 1 s retransmission, which 1 % loss must not turn into a verdict.
    return make_lab(servers, targets, timeout="2s")


GONE = ("inconclusive", "target.down")


def test_baseline_has_only_the_dead_server_failing(lab: Lab) -> None:
    assert lab.baseline is not None
    verdicts = {t["name"]: (t["status"], t["reason"]) for t in lab.baseline.result["targets"]}
    assert all(verdicts[name] == ("ok", "ok") for name in WORKING), verdicts
    assert verdicts["gone"] == ("blocked", "tcp.reset"), verdicts  # no baseline to compare yet


def test_one_percent_loss_both_ways_is_ok(lab: Lab) -> None:
    run = lab.run(nft=["numgen random mod 100 < 1 drop"])
    expect(lab, run, {name: ("ok", "ok") for name in WORKING} | {"gone": GONE})


def test_server_down_in_the_baseline_too_is_target_down(lab: Lab) -> None:
    run = lab.run()
    expect(lab, run, {"gone": GONE})


def test_controls_dead_is_network_down(lab: Lab) -> None:
    run = lab.run(nft=["drop"])  # nothing crosses the censor: the network is gone
    everything = {name: ("inconclusive", "network.down") for name in (*WORKING, "gone")}
    expect(lab, run, everything, network=("inconclusive", "network.down"))
    assert run.code == 3, f"exit code {run.code}, CONTRACT §2 says 3 when the controls fail"
