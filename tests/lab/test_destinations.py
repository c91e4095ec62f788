"""Lab: no surprises on the wire. Every new flow the probe opens from the client namespace is
recorded (nftables, a dynamic set of destination . protocol . port on the client's output hook),
and the recorded set must be exactly the catalog's targets, controls, resolver and DoH server:
no telemetry, no update check, no lookup of its own, never the host's resolver.

The client namespace gets default routes (IPv4 and IPv6) toward the censor, which has no route
out of the lab: a packet to anywhere is built and recorded, and goes nowhere.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import CENSOR_CLIENT_SIDE, SERVER_EXTRA, SERVER_IP, Topology, run_probe, sh
from scenario import Lab, MakeLab, expect_clean_baseline, server, target

pytestmark = pytest.mark.lab

SITE = "site.example.org"
TABLE = "probewatch"
CLIENT_V6, CENSOR_V6 = "fd00:199:1::2", "fd00:199:1::1"
CONTROL_IP = SERVER_EXTRA[1]  # where scenario.Lab puts the control
Flow = tuple[str, str, int]  # destination address, "tcp"/"udp", port

RECORDER = f"""
table inet {TABLE} {{
  set seen4 {{ type ipv4_addr . inet_proto . inet_service; flags dynamic; }}
  set seen6 {{ type ipv6_addr . inet_proto . inet_service; flags dynamic; }}
  set other {{ type inet_proto; flags dynamic; }}
  chain out {{
    type filter hook output priority filter; policy accept;
    ct state new meta nfproto ipv4 meta l4proto {{ tcp, udp }} add @seen4 {{ ip daddr . meta l4proto . th dport }}
    ct state new meta nfproto ipv6 meta l4proto {{ tcp, udp }} add @seen6 {{ ip6 daddr . meta l4proto . th dport }}
    ct state new meta l4proto != {{ tcp, udp }} add @other {{ meta l4proto }}
  }}
}}
"""


class Recorder:
    """The client namespace's record of new flows it sent."""

    def __init__(self, topology: Topology) -> None:
        self.ns = topology.client

    def install(self) -> None:
        sh(["nft", "delete", "table", "inet", TABLE], ns=self.ns, check=False)
        sh(["nft", "-f", "-"], ns=self.ns, stdin=RECORDER)

    def clear(self) -> None:
        for name in ("seen4", "seen6", "other"):
            sh(["nft", "flush", "set", "inet", TABLE, name], ns=self.ns)

    def flows(self) -> set[Flow]:
        found: set[Flow] = set()
        for name in ("seen4", "seen6"):
            listing = json.loads(sh(["nft", "-j", "list", "set", "inet", TABLE, name],
                                    ns=self.ns).stdout)
            for item in listing["nftables"]:
                for elem in item.get("set", {}).get("elem", []):
                    address, proto, port = elem["elem"]["val"]["concat"] if isinstance(
                        elem, dict) and "elem" in elem else elem["concat"]
                    found.add((str(address), str(proto), int(port)))
        return found

    def other_protocols(self) -> list[str]:
        listing = json.loads(sh(["nft", "-j", "list", "set", "inet", TABLE, "other"],
                                ns=self.ns).stdout)
        return [str(e) for item in listing["nftables"] for e in item.get("set", {}).get("elem", [])]


@pytest.fixture(scope="module")
def lab(make_lab: MakeLab, topology: Topology) -> Lab:
    # Routes to everywhere (toward the censor, a dead end): nothing fails locally unseen.
    sh(["ip", "route", "add", "default", "via", CENSOR_CLIENT_SIDE], ns=topology.client)
    b = topology.base
    sh(["ip", "-6", "addr", "add", f"{CLIENT_V6}/64", "dev", f"{b}a", "nodad"], ns=topology.client)
    sh(["ip", "-6", "addr", "add", f"{CENSOR_V6}/64", "dev", f"{b}b", "nodad"], ns=topology.censor)
    sh(["ip", "-6", "route", "add", "default", "via", CENSOR_V6], ns=topology.client)
    servers = [
        server("tls", "tls", port=8443, name=SITE),
        server("web", "https", port=8444, name=SITE),
        server("plain", "tcp"),
        server("quic", "quic", name=SITE),
        server("stun", "stun"),
    ]

    def targets(ports: dict[str, int]) -> list[dict[str, object]]:
        return [
            target("name", f"dns://{SITE}"),
            target("tls", f"tls://{SITE}:8443"),
            target("web", f"https://{SITE}:8444/"),
            target("plain", f"tcp://{SERVER_IP}:{ports['plain']}"),
            target("quic", f"quic://{SITE}:{ports['quic']}"),
            target("stun", f"stun://{SERVER_IP}:{ports['stun']}"),
        ]

    made = make_lab(servers, targets, records={SITE: [SERVER_IP]}, attempts=2)
    Recorder(topology).install()
    return made


def expected(lab: Lab, *, resolver: Flow) -> set[Flow]:
    p = lab.ports
    return {
        resolver,
        (SERVER_IP, "tcp", p["doh"]),
        (CONTROL_IP, "tcp", p["control"]),
        (SERVER_IP, "tcp", 8443),
        (SERVER_IP, "tcp", 8444),
        (SERVER_IP, "tcp", p["plain"]),
        (SERVER_IP, "udp", p["quic"]),
        (SERVER_IP, "udp", p["stun"]),
    }


def compare(recorded: set[Flow], wanted: set[Flow]) -> None:
    print("\nrecorded flows: " + ", ".join(f"{a} {p}/{n}" for a, p, n in sorted(recorded)))
    assert recorded == wanted, (f"unexpected: {sorted(recorded - wanted)}\n"
                                f"missing: {sorted(wanted - recorded)}")


def test_baseline_is_clean(lab: Lab) -> None:
    expect_clean_baseline(lab)


def test_the_recorder_sees_what_it_should(lab: Lab, topology: Topology) -> None:
    """A flow to an address outside the lab, over either family, is recorded: the test can fail."""
    recorder = Recorder(topology)
    recorder.clear()
    script = ("import socket\n"
              "for family, host in ((socket.AF_INET, '192.0.2.53'),"
              " (socket.AF_INET6, '2001:db8::53')):\n"
              "    s = socket.socket(family, socket.SOCK_DGRAM)\n"
              "    s.sendto(b'x', (host, 53))\n"
              "    s.close()\n")
    sh([sys.executable, "-c", script],
       ns=topology.client)
    assert recorder.flows() == {("192.0.2.53", "udp", 53), ("2001:db8::53", "udp", 53)}


def test_a_run_contacts_exactly_the_catalog(lab: Lab, topology: Topology) -> None:
    assert lab.catalog is not None
    recorder = Recorder(topology)
    recorder.clear()
    run = run_probe(topology, lab.catalog)
    assert run.code == 0, run.stderr[-2000:]
    compare(recorder.flows(), expected(lab, resolver=(CENSOR_CLIENT_SIDE, "udp", lab.ports[
        "resolver"])))
    assert recorder.other_protocols() == []


@pytest.fixture
def system_resolver(topology: Topology) -> Iterator[Path]:
    """/etc/netns/<client>/resolv.conf naming the lab resolver: `ip netns exec` mounts it over
    /etc/resolv.conf for the probe."""
    folder = Path("/etc/netns") / topology.client
    folder.mkdir(parents=True, exist_ok=False)
    (folder / "resolv.conf").write_text(f"nameserver {CENSOR_CLIENT_SIDE}\n")
    try:
        yield folder / "resolv.conf"
    finally:
        shutil.rmtree(folder)


def test_system_resolver_is_the_namespace_one_never_the_hosts(
    lab: Lab, topology: Topology, system_resolver: Path, tmp_path: Path
) -> None:
    assert lab.catalog is not None
    document = json.loads(lab.catalog.read_text())
    document["settings"]["resolver"] = "system"
    catalog = tmp_path / "system.yaml"
    catalog.write_text(json.dumps(document))
    seen = sh(["cat", "/etc/resolv.conf"], ns=topology.client).stdout
    assert seen.strip() == f"nameserver {CENSOR_CLIENT_SIDE}"
    recorder = Recorder(topology)
    recorder.clear()
    run = run_probe(topology, catalog)
    # The lab resolver listens on port 53 too (scenario.Lab): the run works as before.
    assert run.code == 0, run.stderr[-2000:]
    compare(recorder.flows(), expected(lab, resolver=(CENSOR_CLIENT_SIDE, "udp", 53)))
