"""The lab's plumbing: three network namespaces (client <-> censor <-> server), the censor's rules,
server processes inside a namespace, and the probe run as the client.

Every address lives inside the namespaces (10.199.0.0/16); no namespace has a link to the host's
network, so nothing the lab sends can leave it. Names carry the pid and a random suffix, so two
runs on one machine never collide, and everything made here is removed by `Topology.destroy()`.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SERVE = Path(__file__).resolve().with_name("serve.py")
NFQUEUE = Path(__file__).resolve().with_name("nfqueue.py")
TOOLS = {"ip": "iproute2", "tc": "iproute2", "nft": "nftables", "iptables": "iptables"}

CLIENT_IP = "10.199.1.2"
CENSOR_CLIENT_SIDE = "10.199.1.1"  # the client's gateway, and where the ISP resolver listens
CENSOR_SERVER_SIDE = "10.199.2.1"
SERVER_IP = "10.199.2.2"
# Further addresses of the server namespace, so a rule can hit one host and spare the others.
SERVER_EXTRA = ("10.199.2.3", "10.199.2.4", "10.199.2.5")
LAB_NET = "10.199.0.0/16"
# The throttle's token bucket and queue. A queue of about a second (20 KB at 128 kbit/s) takes a
# fresh connection's first flight without drops; a shorter one drops most of it and TCP's
# retransmission backoff leaves holes of seconds. A longer one delays the next sample's handshake
# behind what an aborted sample left queued (tc here has no per-flow qdisc: no sfq, no fq_codel).
THROTTLE_BURST, THROTTLE_QUEUE = "4kb", "20kb"
# A documentation prefix (RFC 5737 TEST-NET-2) standing for "somewhere else" inside the lab: the
# server namespace holds it, so a lying resolver's answer leads to an impostor there.
ELSEWHERE_NET = "198.51.100.0/24"
IMPOSTOR_IP = "198.51.100.7"


class LabError(RuntimeError):
    """A lab command failed; the message carries the command and what it printed."""


def missing_tools() -> list[str]:
    """Debian packages to install for the lab tools not found on PATH."""
    return sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})


def sh(argv: Sequence[str], *, ns: str | None = None, check: bool = True,
       stdin: str | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a command (inside namespace `ns` when given) and return it; raise LabError on failure."""
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    done = subprocess.run(full, input=stdin, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(full)} -> {done.returncode}: {done.stderr.strip()}")
    return done


@dataclass
class Topology:
    """Three namespaces joined by two veth pairs; the censor forwards between them."""

    base: str
    made: list[str] = field(default_factory=list)  # namespaces created so far, for cleanup

    @property
    def client(self) -> str:
        return f"{self.base}c"

    @property
    def censor(self) -> str:
        return f"{self.base}m"

    @property
    def server(self) -> str:
        return f"{self.base}s"

    @property
    def censor_to_client(self) -> str:
        """The censor's interface toward the client: where egress shaping happens."""
        return f"{self.base}b"

    @classmethod
    def create(cls) -> Topology:
        # pid (6 digits at most) + 4 hex: interface names stay within Linux's 15 characters.
        topology = cls(base=f"pl{os.getpid() % 1_000_000}{secrets.token_hex(2)}")
        try:
            topology._build()
        except BaseException:
            topology.destroy()
            raise
        return topology

    def _build(self) -> None:
        for ns in (self.client, self.censor, self.server):
            sh(["ip", "netns", "add", ns])
            self.made.append(ns)
            sh(["ip", "link", "set", "lo", "up"], ns=ns)
        b = self.base
        # Created straight inside the namespaces: the host's namespace never sees these links.
        sh(["ip", "link", "add", f"{b}a", "netns", self.client, "type", "veth",
            "peer", "name", f"{b}b", "netns", self.censor])
        sh(["ip", "link", "add", f"{b}d", "netns", self.server, "type", "veth",
            "peer", "name", f"{b}e", "netns", self.censor])
        for ns, dev, addresses in (
            (self.client, f"{b}a", [CLIENT_IP]),
            (self.censor, f"{b}b", [CENSOR_CLIENT_SIDE]),
            (self.censor, f"{b}e", [CENSOR_SERVER_SIDE]),
            (self.server, f"{b}d", [SERVER_IP, *SERVER_EXTRA, IMPOSTOR_IP]),
        ):
            for address in addresses:
                sh(["ip", "addr", "add", f"{address}/24", "dev", dev], ns=ns)
            sh(["ip", "link", "set", dev, "up"], ns=ns)
        # Only the lab's own prefixes are routed: no default route, so no way out of the lab.
        for net in (LAB_NET, ELSEWHERE_NET):
            sh(["ip", "route", "add", net, "via", CENSOR_CLIENT_SIDE], ns=self.client)
        sh(["ip", "route", "add", LAB_NET, "via", CENSOR_SERVER_SIDE], ns=self.server)
        sh(["ip", "route", "add", ELSEWHERE_NET, "via", SERVER_IP], ns=self.censor)
        self.sysctl(self.censor, "net/ipv4/ip_forward", "1")
        # Linux sends at most 6 ICMP errors in a burst to one host, then 1 a second: tests that
        # reject with ICMP one after another would see later SYNs time out instead of refused.
        self.sysctl(self.censor, "net/ipv4/icmp_ratelimit", "0")
        # Byte counters on conntrack entries, for the "freeze after 16 KB" rule.
        Censor(self).apply(nft=["ct state established accept"])  # loads conntrack in this netns
        Censor(self).clear()
        self.sysctl(self.censor, "net/netfilter/nf_conntrack_acct", "1")

    @staticmethod
    def sysctl(ns: str, key: str, value: str) -> None:
        sh(["sh", "-c", f"echo {value} > /proc/sys/{key}"], ns=ns)

    def destroy(self) -> None:
        """Delete every namespace made (their links and processes' sockets go with them)."""
        for ns in reversed(self.made):
            sh(["ip", "netns", "del", ns], check=False)
        self.made.clear()


class Censor:
    """The middle namespace's rules: an nftables table, iptables string matches, tc shaping."""

    TABLE = "probelab"

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.ns = topology.censor
        self._queues: list[Queue] = []

    def apply(self, *, nft: Sequence[str] = (), iptables: Sequence[Sequence[str]] = (),
              throttle: Sequence[tuple[str, str]] = (), extra: Sequence[str] = ()) -> None:
        """Install rules on the forward path.

        nft: rules of the forward chain, e.g. `ip daddr 10.199.2.3 drop`.
        iptables: argument lists appended to FORWARD (for `-m string`, which nft lacks).
        throttle: (nft match, rate) pairs; packets toward the client matching one go through an
        htb class of their own at that rate, with a tbf below it dropping what overflows its
        queue, as a throttling DPI box does; e.g. ("ip saddr 10.199.2.2 tcp sport 8443", "128kbit").
        extra: more of the lab's table, as nft text: sets, and chains on other hooks or
        priorities (see `nft_chain`), e.g. an input chain reaching the ISP resolver, which
        listens on the censor itself, or a nat chain redirecting to a captive portal.
        """
        chains = ["  chain censor {",
                  "    type filter hook forward priority filter; policy accept;",
                  *(f"    {rule}" for rule in nft), "  }", *extra]
        if throttle:
            classes = self._shaper([rate for _, rate in throttle])
            chains += ["  chain shape {",
                       "    type filter hook postrouting priority filter; policy accept;",
                       *(f"    {match} meta priority set {classid}"
                         for (match, _), classid in zip(throttle, classes, strict=True)),
                       "  }"]
        ruleset = "\n".join([f"table inet {self.TABLE} {{", *chains, "}", ""])
        sh(["nft", "-f", "-"], ns=self.ns, stdin=ruleset)
        for rule in iptables:
            sh(["iptables", "-A", "FORWARD", *rule], ns=self.ns)

    def _shaper(self, rates: Sequence[str]) -> list[str]:
        """An htb root on the egress to the client: unshaped default class 1:1, then one class
        (1:20, 1:21...) per rate, each with a tbf; returns the class ids."""
        dev = self.topology.censor_to_client
        sh(["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1"],
           ns=self.ns)
        sh(["tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb",
            "rate", "10gbit"], ns=self.ns)
        classes = []
        for number, rate in enumerate(rates, start=0x20):
            classid = f"1:{number:x}"
            sh(["tc", "class", "add", "dev", dev, "parent", "1:", "classid", classid, "htb",
                "rate", rate, "ceil", rate], ns=self.ns)
            sh(["tc", "qdisc", "add", "dev", dev, "parent", classid, "handle", f"{number:x}:",
                "tbf", "rate", rate, "burst", THROTTLE_BURST, "limit", THROTTLE_QUEUE],
               ns=self.ns)
            classes.append(classid)
        return classes

    def queue(self, match: str | Sequence[str], mode: str, folder: Path, *, bypass: bool = False,
              **options: Any) -> Queue:
        """Hand packets matching `match` (nft matches, e.g. `ip daddr 10.199.2.2 udp dport 443`;
        several for both directions) on the forward path to an NFQUEUE helper (nfqueue.py) in
        this namespace, in `mode` with `options` (lossjitter: loss, jitter_ms, seed; quic-sni:
        block). Its summary and stderr go to `folder`. With `bypass`, packets pass while no
        helper listens; without, they are dropped, so a dead helper cannot pass for a kind one.
        The helper runs until `clear()` (or the handle's `stop()`)."""
        matches = [match] if isinstance(match, str) else list(match)
        handle = Queue(self, next(_QUEUE_NUMBERS), matches, {"mode": mode, **options}, folder,
                       bypass=bypass)
        handle.start()
        self._queues.append(handle)
        return handle

    def clear(self) -> None:
        """Remove every rule and shaper: the path forwards everything again."""
        while self._queues:
            self._queues.pop().stop()
        sh(["nft", "delete", "table", "inet", self.TABLE], ns=self.ns, check=False)
        sh(["iptables", "-F", "FORWARD"], ns=self.ns, check=False)
        sh(["tc", "qdisc", "del", "dev", self.topology.censor_to_client, "root"],
           ns=self.ns, check=False)

    def listing(self) -> str:
        """The rules in force, for failure messages."""
        nft = sh(["nft", "list", "ruleset"], ns=self.ns, check=False).stdout
        ipt = sh(["iptables", "-S", "FORWARD"], ns=self.ns, check=False).stdout
        return nft + ipt


def nft_chain(name: str, hook: str, rules: Sequence[str], *, kind: str = "filter",
              priority: str = "filter") -> str:
    """A base chain of the lab's table as nft text, for `Censor.apply(extra=...)`."""
    return "\n".join([f"  chain {name} {{",
                      f"    type {kind} hook {hook} priority {priority}; policy accept;",
                      *(f"    {rule}" for rule in rules), "  }"])


class Servers:
    """`serve.py` running in a namespace: mock servers started from a spec, until stopped."""

    script = SERVE  # a program speaking serve.py's ready line and stopping at EOF on stdin

    def __init__(self, ns: str, spec: dict[str, Any], log: Path) -> None:
        self.ns = ns
        self.spec = spec
        self.log = log
        self.ports: dict[str, int] = {}
        self._proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30.0) -> dict[str, int]:
        with self.log.open("w") as err:
            self._proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, sys.executable, str(self.script),
                 json.dumps(self.spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO,
                env=_env(),
            )
        ready = self._read_line(timeout)
        if not ready.get("ready"):
            raise LabError(f"{self.script.name} in {self.ns} failed: {ready.get('error')}\n"
                           f"{self._stderr()}")
        self.ports = {k: int(v) for k, v in ready["ports"].items()}
        return self.ports

    def set_behaviour(self, server_id: str, behaviour: str) -> None:
        """Change a running server's behaviour (the convention lets it change while running)."""
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"id": server_id, "behaviour": behaviour}) + "\n")
        self._proc.stdin.flush()
        answer = self._read_line(10.0)
        if not answer.get("ok"):
            raise LabError(f"cannot set {server_id} to {behaviour}: {answer.get('error')}")

    def _read_line(self, timeout: float) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise LabError(f"{self.script.name} in {self.ns} said nothing in {timeout} s\n"
                               f"{self._stderr()}")
        line = self._proc.stdout.readline()
        if not line:
            raise LabError(f"{self.script.name} in {self.ns} exited: {self._proc.poll()}\n"
                           f"{self._stderr()}")
        return dict(json.loads(line))

    def _stderr(self) -> str:
        try:
            return self.log.read_text()[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin:
            proc.stdin.close()  # serve.py stops its servers and exits at EOF
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout:
            proc.stdout.close()


# Queue numbers are per namespace; one count for the whole run keeps every queue distinct anyway.
_QUEUE_NUMBERS = itertools.count(1)


class Queue(Servers):
    """An NFQUEUE helper (nfqueue.py) in the censor namespace and the rules feeding it.

    This kernel has nft's `queue` statement compiled out (CONFIG_NFT_QUEUE unset: `nft` answers
    "No such file or directory") but xtables' NFQUEUE target in: so an nft chain in a table of its
    own marks the matching packets, and an iptables rule in mangle FORWARD queues what carries the
    mark. The mark is set at a priority before mangle, so the queue sees packets before any rule of
    `Censor.apply` (filter FORWARD, table probelab) does, and `apply`/`clear` leave it alone.
    """

    script = NFQUEUE
    MARK_PRIORITY = "mangle - 10"

    def __init__(self, censor: Censor, number: int, matches: Sequence[str],
                 mode: dict[str, Any], folder: Path, *, bypass: bool = False) -> None:
        self.censor = censor
        self.number = number
        self.matches = list(matches)
        self.summary_file = folder / f"nfqueue-{number}.json"
        self.table = f"{Censor.TABLE}_q{number}"
        self.target = ["-m", "mark", "--mark", str(number), "-j", "NFQUEUE",
                       "--queue-num", str(number), *(["--queue-bypass"] if bypass else [])]
        super().__init__(censor.ns, {"queue": number, "log": str(self.summary_file), **mode},
                         folder / f"nfqueue-{number}.err")

    def start(self, timeout: float = 30.0) -> dict[str, int]:
        """Start the helper, then (once it is bound) the rules; the helper's ready line."""
        ports = super().start(timeout)
        try:
            ruleset = "\n".join([
                f"table inet {self.table} {{", "  chain tag {",
                f"    type filter hook forward priority {self.MARK_PRIORITY}; policy accept;",
                *(f"    {match} meta mark set {self.number}" for match in self.matches),
                "  }", "}", ""])
            sh(["nft", "-f", "-"], ns=self.ns, stdin=ruleset)
            sh(["iptables", "-t", "mangle", "-A", "FORWARD", *self.target], ns=self.ns)
        except BaseException:
            self.stop()
            raise
        return ports

    def stats(self) -> dict[str, Any]:
        """The helper's summary: seen, accepted, dropped, delayed, held, and the mode's own
        (for quic-sni `snis`: name -> Initials naming it). Final once stopped."""
        return dict(json.loads(self.summary_file.read_text()))

    def stop(self) -> None:
        """Remove the rules, then stop the helper (it passes what it still holds)."""
        sh(["iptables", "-t", "mangle", "-D", "FORWARD", *self.target], ns=self.ns, check=False)
        sh(["nft", "delete", "table", "inet", self.table], ns=self.ns, check=False)
        super().stop()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("COLUMNS", None)
    return env


@dataclass
class ProbeRun:
    """One `probe run` as the client: exit code, the parsed result, stderr, seconds taken."""

    code: int
    result: dict[str, Any]
    stderr: str
    seconds: float

    def target(self, name: str) -> dict[str, Any]:
        for t in self.result["targets"]:
            if t.get("name") == name:
                return dict(t)
        raise KeyError(f"no target named {name!r} in the run")


def run_probe(topology: Topology, catalog: Path, *, baseline: Path | None = None,
              output: Path | None = None, timeout: float = 180.0) -> ProbeRun:
    """`probe run -c catalog -f json [-b baseline]` inside the client namespace."""
    return RunningProbe(topology, catalog, baseline=baseline).wait(output=output,
                                                                   timeout=timeout)


class RunningProbe:
    """`probe run` started in the client namespace and not yet finished: for a scenario that
    changes the censor's rules while the probe runs (an outage at the start of the run)."""

    def __init__(self, topology: Topology, catalog: Path, *,
                 baseline: Path | None = None) -> None:
        argv = [sys.executable, "-m", "probe", "run", "-c", str(catalog), "-f", "json"]
        if baseline is not None:
            argv += ["-b", str(baseline)]
        self.start = time.monotonic()
        self._proc = subprocess.Popen(["ip", "netns", "exec", topology.client, *argv],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      cwd=REPO, env=_env())

    def wait(self, *, output: Path | None = None, timeout: float = 180.0) -> ProbeRun:
        """The finished run (killed after `timeout` seconds)."""
        try:
            stdout, stderr = self._proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()
            raise
        seconds = time.monotonic() - self.start
        code = self._proc.returncode
        try:
            result = json.loads(stdout)
        except ValueError:
            raise LabError(f"probe run printed no JSON (exit {code}):\n"
                           f"{stdout[-2000:]}\n{stderr[-4000:]}") from None
        if output is not None:
            output.write_text(stdout)
        return ProbeRun(code=code, result=result, stderr=stderr, seconds=seconds)
