"""Lab: a network-wide outage of 3 s at the start of a run (issue 17): every packet lost, the ISP
resolver's too, then the network comes back. No target may read blocked: what failed in the
first seconds on every target and control alike is the network's, not a censor's."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from netns import SERVER_EXTRA, SERVER_IP, Censor, ProbeRun, RunningProbe, nft_chain, sh
from scenario import (
    CONTROL_IP,
    Lab,
    MakeLab,
    control,
    expect_clean_baseline,
    server,
    target,
)

pytestmark = pytest.mark.lab

OUTAGE_S = 3.0
# Each sample may take 2 s, so a target's three samples reach past the outage (begun at 0, 2
# and 4 s when the first two fail): with the lab's usual 1 s, all three would fall inside it and
# a target silent for its whole measurement cannot be told from a blocked one.
TIMEOUT = "2s"
TLS, WEB, STUN = "tls.lab.test", "web.lab.test", "stun.lab.test"
CONTROLS = ("ctl1.lab.test", "ctl2.lab.test")
FIRST_PACKET_WAIT_S = 30.0  # the probe's start (imports, catalog) before its first packet


@pytest.fixture(scope="module")
def lab(make_lab: MakeLab) -> Iterator[Lab]:
    servers = [
        server("tcp", "tcp"),
        server("tls", "tls", name=TLS),
        server("web", "https", name=WEB),
        server("stun", "stun", port=3478),
        server("call", "stun"),
        server("quic", "quic", port=443, name=WEB),
        server("stunctl", "stun", host=CONTROL_IP),
        server("ctl1", "https", host=CONTROL_IP, port=443, name=CONTROLS[0]),
        server("ctl2", "https", host=SERVER_EXTRA[0], port=443, name=CONTROLS[1]),
    ]
    records = {TLS: [SERVER_IP], WEB: [SERVER_IP], STUN: [SERVER_IP],
               CONTROLS[0]: [CONTROL_IP], CONTROLS[1]: [SERVER_EXTRA[0]]}

    def targets(ports: dict[str, int]) -> list[dict[str, Any]]:
        # By name wherever a name fits: the resolver is lost in the outage too.
        return [
            target("tcp", f"tcp://{SERVER_IP}:{ports['tcp']}", feature="chat"),
            target("tls", f"tls://{TLS}:{ports['tls']}", feature="chat"),
            target("web", f"https://{WEB}:{ports['web']}/", feature="web"),
            target("name", f"dns://{WEB}", feature="web"),
            target("quic", f"quic://{WEB}:443", feature="web"),
            target("stun", f"stun://{STUN}:3478", feature="voice"),
            # One exchange and no name to resolve again: its three requests all fall in the
            # outage unless the layer spreads them in time.
            target("stunip", f"stun://{SERVER_IP}:3478", feature="voice"),
            target("call", f"stun://{STUN}:{ports['call']}", feature="calls",
                   call={"duration": "2s"}),
            control("stunctl", f"stun://{CONTROL_IP}:{ports['stunctl']}"),
            *(control(name, f"https://{name}/") for name in CONTROLS),
        ]

    made = make_lab(servers, targets, records=records, timeout=TIMEOUT)
    try:
        yield made
    finally:
        made.censor.clear()


def _dropped(censor: Censor) -> int:
    """Packets the outage's rules have dropped so far."""
    listing = json.loads(sh(["nft", "-j", "list", "table", "inet", Censor.TABLE],
                            ns=censor.ns).stdout)
    return sum(expr["counter"]["packets"] for item in listing["nftables"]
               for expr in item.get("rule", {}).get("expr", []) if "counter" in expr)


def run_with_outage(lab: Lab, seconds: float) -> ProbeRun:
    """A run against the baseline during which, from its first packet, the censor drops every
    packet for `seconds`: forwarded ones and those to the ISP resolver on the censor itself."""
    assert lab.catalog is not None
    lab.censor.apply(nft=["counter drop"], extra=[nft_chain("outage", "input", ["counter drop"])])
    lab.rules = lab.censor.listing()
    try:
        probe = RunningProbe(lab.topology, lab.catalog, baseline=lab.baseline_file)
        deadline = time.monotonic() + FIRST_PACKET_WAIT_S
        while not _dropped(lab.censor):  # the outage starts with the probe's first packet
            if time.monotonic() > deadline:
                raise AssertionError(f"no packet from the probe in {FIRST_PACKET_WAIT_S} s")
            time.sleep(0.005)
        time.sleep(seconds)  # the outage itself, not a margin
    finally:
        lab.censor.clear()
    return probe.wait(output=lab.next_output())


def test_baseline_without_rules_is_clean(lab: Lab) -> None:
    expect_clean_baseline(lab)


def test_outage_at_the_start_blocks_no_target(lab: Lab) -> None:
    run = run_with_outage(lab, OUTAGE_S)
    targets = run.result["targets"]
    summary = "\n".join(f"  {t['name']}: {t['status']} {t['reason']}: {t['detail']}"
                        for t in targets)
    network = run.result["network"]
    context = f"network: {network['status']} {network['reason']}: {network['detail']}\n{summary}"
    assert not [t for t in targets if t["status"] == "blocked"], context
    # The network came back: the controls say so, and every target that failed for a while
    # says the failure was the network's.
    assert (network["status"], network["reason"]) == ("ok", "ok"), context
    assert "outage" in network["detail"], context
    for t in targets:
        if t["status"] != "ok":
            assert "the network's, not a censor's" in t["detail"], context
