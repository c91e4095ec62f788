"""The shipped catalog with DNS answered and every other packet silently dropped, in a sealed netns.

    python bench/blackhole.py          # one run, as bench/run.py's `blackhole` section runs it

A network namespace of its own, linked to nothing outside it: loopback, and a veth pair whose
two ends both sit inside it. The default routes (IPv4 and IPv6) point out of one end at a
neighbour that is written in (no ARP, no neighbour discovery: those would fail and turn silence
into "host unreachable"), and an nftables netdev chain on that end's egress drops every packet,
so a connect waits for its timeout and a UDP send succeeds and hears nothing, as behind a censor
that drops everything. Nothing can leave: no link reaches the host's network.

DNS answers: probe's mock DnsServer, inside the namespace on the veth end's own address (reached
over loopback, untouched by the drop rule), answers every name with an address of its own from
ANSWERS, a global prefix (a private or shared one would read as a DNS bogon, one address for
every name as a captive portal) that only this namespace routes: into the drop rule. `ip netns exec` mounts /etc/netns/<name>/resolv.conf over
/etc/resolv.conf, so the catalog's `resolver: system` finds it (as tests/lab does). Then the
shipped catalog, unchanged, runs as a whole `probe run` process inside the namespace.

Needs Linux, root, `ip` and `nft` (tests/lab/netns.py's helpers build and run the commands);
`available()` says why not otherwise.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "tests" / "lab"), str(REPO)]

from netns import missing_tools, sh  # type: ignore[import-not-found]  # tests/lab, put on the path above

CATALOG = REPO / "probe" / "data" / "probes.yaml"
RESOLVER = "10.213.0.1"  # the veth end's own address: where the mock resolver listens
GATEWAY, GATEWAY6 = "10.213.0.2", "fd00:213::2"  # the written-in neighbour the routes point at
ANSWERS = "11.213.0.0/16"  # names' addresses, one a name: global, and routed into the drop
NEIGHBOUR_MAC = "02:00:00:00:00:02"
GOAL_SECONDS = 10.0  # issue 19


def available() -> str | None:
    """Why this bench cannot run here, or None."""
    if sys.platform != "linux":
        return "needs Linux (network namespaces)"
    if os.geteuid() != 0:
        return "needs root (ip netns, nft)"
    if missing := missing_tools():
        return f"needs {', '.join(missing)}"
    return None


@dataclass
class Blackholed:
    """A finished run: wall time, the JSON result, packets the drop rule counted, DNS queries."""

    wall: float
    result: dict[str, Any]
    dropped: int
    queries: int
    code: int


class Namespace:
    """The sealed namespace; `destroy()` removes it and its resolv.conf."""

    def __init__(self) -> None:
        self.name = f"pb{os.getpid() % 1_000_000}{secrets.token_hex(2)}"
        self.etc = Path("/etc/netns") / self.name
        self.made = False
        try:
            self._build()
        except BaseException:
            self.destroy()
            raise

    def _build(self) -> None:
        ns = self.name
        sh(["ip", "netns", "add", ns])
        self.made = True
        sh(["ip", "link", "set", "lo", "up"], ns=ns)
        # Both ends inside: whatever passed the drop rule would still stay in the namespace.
        sh(["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"], ns=ns)
        sh(["ip", "addr", "add", f"{RESOLVER}/24", "dev", "v0"], ns=ns)
        sh(["ip", "-6", "addr", "add", "fd00:213::1/64", "dev", "v0", "nodad"], ns=ns)
        for dev in ("v0", "v1"):
            sh(["ip", "link", "set", dev, "up"], ns=ns)
        for family, gateway in (("-4", GATEWAY), ("-6", GATEWAY6)):
            sh(["ip", family, "neigh", "add", gateway, "lladdr", NEIGHBOUR_MAC, "dev", "v0",
                "nud", "permanent"], ns=ns)
            sh(["ip", family, "route", "add", "default", "via", gateway, "dev", "v0", "onlink"],
               ns=ns)
        rules = ("table netdev blackhole {\n"
                 "  chain drop_all {\n"
                 '    type filter hook egress device "v0" priority 0; policy drop;\n'
                 "    counter drop\n"
                 "  }\n"
                 "}\n")
        sh(["nft", "-f", "-"], ns=ns, stdin=rules)
        self.etc.mkdir(parents=True, exist_ok=False)
        (self.etc / "resolv.conf").write_text(f"nameserver {RESOLVER}\n")

    def dropped(self) -> int:
        listing = sh(["nft", "-j", "list", "table", "netdev", "blackhole"], ns=self.name).stdout
        for item in json.loads(listing)["nftables"]:
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
        return 0

    def destroy(self) -> None:
        if self.made:
            sh(["ip", "netns", "del", self.name], check=False)
            self.made = False
        shutil.rmtree(self.etc, ignore_errors=True)


def _probe_command() -> list[str]:
    exe = Path(sys.executable).with_name("probe")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "probe"]


def run_once(catalog: Path = CATALOG) -> Blackholed:
    """One whole `probe run` of the catalog in a fresh sealed namespace."""
    space = Namespace()
    try:
        dns = subprocess.Popen(
            ["ip", "netns", "exec", space.name, sys.executable, __file__, "--dns"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        try:
            assert dns.stdout is not None and dns.stdin is not None
            ready = dns.stdout.readline()
            if ready.strip() != "ready":
                raise RuntimeError(f"the namespace's resolver did not start: {ready!r}")
            with tempfile.TemporaryDirectory() as folder:
                out = Path(folder) / "run.json"
                started = time.perf_counter()
                done = subprocess.run(["ip", "netns", "exec", space.name, *_probe_command(),
                                       "run", "-c", str(catalog), "-o", str(out), "-f", "json"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      check=False, cwd=REPO)
                wall = time.perf_counter() - started
                if not out.exists():
                    raise RuntimeError(f"probe run exited {done.returncode}: "
                                       f"{done.stderr.decode()[-300:]}")
                result = json.loads(out.read_text())
            dns.stdin.close()  # the resolver prints its query count and exits
            queries = int(dns.stdout.readline() or 0)
        finally:
            if dns.poll() is None:
                dns.kill()
            dns.wait()
        return Blackholed(wall, result, space.dropped(), queries, done.returncode)
    finally:
        space.destroy()


def address_of(name: str) -> str:
    """A name's address in ANSWERS: the same for a name every time, different for most names."""
    network = ipaddress.ip_network(ANSWERS)
    offset = zlib.crc32(name.lower().rstrip(".").encode()) % (network.num_addresses - 2) + 1
    return str(network[offset])


def _serve_dns() -> None:
    """Inside the namespace: answer every name (A: address_of, AAAA: none) until stdin closes;
    then print the number of queries."""
    import dns.message

    from probe.mock.dns import DnsServer, build_reply

    class EveryName(DnsServer):
        def reply(self, query: dns.message.Message, *, over_tcp: bool = False,
                  forged: bool = False) -> dns.message.Message | None:
            return build_reply(query, {}, addresses=[address_of(str(query.question[0].name))])

    async def serve() -> int:
        server = EveryName(host=RESOLVER, port=53)
        await server.start()
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
        await server.stop()
        return server.queries

    print(asyncio.run(serve()), flush=True)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--dns"]:
        _serve_dns()
        return
    if reason := available():
        sys.exit(f"blackhole: cannot run: {reason}")
    run = run_once()
    print(f"blackholed shipped catalog: {run.wall:.1f} s, exit {run.code}, "
          f"{run.dropped} packets dropped, {run.queries} DNS queries answered")


if __name__ == "__main__":
    main(sys.argv[1:])
