"""A lab scenario set: servers in the namespaces, the catalog probing them, a baseline, and runs
with the censor's rules on; plus the check that a run says what the scenario expects.

One `Lab` per test module: its servers start once and its baseline is recorded once with no
rules; each test then installs rules, runs the probe against that baseline, and clears the rules.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netns import (
    CENSOR_CLIENT_SIDE,
    SERVER_EXTRA,
    SERVER_IP,
    Censor,
    ProbeRun,
    Servers,
    Topology,
    run_probe,
)

CONTROL_IP = SERVER_EXTRA[1]  # controls live on their own address: rules aimed at targets spare it
CONTROL_SNI = "control.lab.test"


def server(sid: str, kind: str, *, host: str = SERVER_IP, port: int = 0, behaviour: str = "ok",
           name: str = "mock.test", **options: Any) -> dict[str, Any]:
    """One entry of a serve.py spec."""
    return {"id": sid, "kind": kind, "host": host, "port": port, "behaviour": behaviour,
            "name": name, "options": options}


def target(name: str, url: str, *, feature: str | None = None, **options: Any) -> dict[str, Any]:
    """A catalog target labelled `name` (results are looked up by it), in feature `feature`."""
    return {"name": name, "url": url, "feature": feature or name, **options}


def control(name: str, url: str, **options: Any) -> dict[str, Any]:
    """A control of the catalog, beside the lab's TCP one (a generic STUN control, a QUIC one,
    named HTTPS ones a portal answers for); listed with the targets, looked up by `name`."""
    return {"name": name, "url": url, "control": True, **options}


@dataclass
class Lab:
    """The running lab of one test module."""

    topology: Topology
    folder: Path
    censor: Censor = field(init=False)
    ports: dict[str, int] = field(default_factory=dict)
    catalog: Path | None = None
    baseline: ProbeRun | None = None
    _servers: list[Servers] = field(default_factory=list)
    _behaviours: dict[str, str] = field(default_factory=dict)  # each server's own behaviour
    _runs: int = 0  # runs made against the baseline, for their files' names

    def __post_init__(self) -> None:
        self.censor = Censor(self.topology)
        self.ca_file = self.folder / "lab-ca.pem"
        self.baseline_file = self.folder / "baseline.json"

    def serve(self, servers: Sequence[dict[str, Any]],
              records: dict[str, list[str]] | None = None,
              resolver: dict[str, Any] | None = None) -> None:
        """Start `servers` and a control in the server namespace. With `records`, also a DoH
        server there and the ISP resolver in the censor namespace, both answering `records`
        truthfully until told otherwise (`resolver`: options of the resolver's DnsServer, e.g.
        its own `records` or a `lie` address); without, targets must carry `address:` or an IP."""
        spec = [*servers, server("control", "tcp", host=CONTROL_IP)]
        if records is not None:
            spec.append(server("doh", "doh", name=SERVER_IP, records=records))
        main = Servers(self.topology.server, {"ca_file": str(self.ca_file), "servers": spec},
                       self.folder / "serve-server.log")
        self._servers.append(main)
        self.ports.update(main.start())
        self._behaviours.update({entry["id"]: entry["behaviour"] for entry in spec})
        if records is None:
            return
        isp = Servers(
            self.topology.censor,
            {"ca_file": None, "servers": [
                server("resolver", "dns", host=CENSOR_CLIENT_SIDE, port=53,
                       **{"records": records, **(resolver or {})})]},
            self.folder / "serve-censor.log")
        self._servers.append(isp)
        self.ports.update(isp.start())
        self._behaviours["resolver"] = "ok"

    def set_behaviour(self, server_id: str, behaviour: str) -> None:
        """Switch a running server (in either namespace) to another behaviour."""
        for servers in self._servers:
            if server_id in servers.ports:
                servers.set_behaviour(server_id, behaviour)
                return
        raise KeyError(server_id)

    def write_catalog(self, targets: Sequence[dict[str, Any]], *, platform: str = "lab",
                      **settings: Any) -> Path:
        """The catalog (JSON is YAML) with the lab's resolver, DoH, CA and short timeouts."""
        features: dict[str, list[dict[str, Any]]] = {}
        controls: list[dict[str, Any]] = []
        for t in targets:
            entry = {k: v for k, v in t.items() if k not in ("feature", "control")}
            if t.get("control"):
                controls.append(entry)
            else:
                features.setdefault(t["feature"], []).append(entry)
        lab_settings: dict[str, Any] = {"timeout": "1s", "attempts": 3,
                                        "ca_file": str(self.ca_file), "control_sni": CONTROL_SNI}
        if "resolver" in self.ports:
            lab_settings["resolver"] = f"{CENSOR_CLIENT_SIDE}:{self.ports['resolver']}"
            lab_settings["doh"] = f"https://{SERVER_IP}:{self.ports['doh']}/dns-query"
        document = {
            "version": 1,
            "settings": {**lab_settings, **settings},
            "controls": [{"url": f"tcp://{CONTROL_IP}:{self.ports['control']}",
                          "name": "control"}, *controls],
            "platforms": {platform: {"name": "Lab", "features": features}},
        }
        self.catalog = self.folder / "probes.yaml"
        self.catalog.write_text(json.dumps(document, indent=2))
        return self.catalog

    def record_baseline(self) -> ProbeRun:
        """The run with no rules at all: what every later run is judged against."""
        assert self.catalog is not None
        self.censor.clear()
        self.baseline = run_probe(self.topology, self.catalog, output=self.baseline_file)
        return self.baseline

    def run(self, *, nft: Sequence[str] = (), iptables: Sequence[Sequence[str]] = (),
            throttle: Sequence[tuple[str, str]] = (), extra: Sequence[str] = (),
            behaviours: dict[str, str] | None = None) -> ProbeRun:
        """A run against the baseline with the given censor rules in force and servers switched
        to `behaviours` (id -> behaviour, e.g. the ISP resolver lying); all undone after.
        `extra`: more nft text for the censor's table (Censor.apply)."""
        assert self.catalog is not None and self.baseline is not None
        try:
            for server_id, behaviour in (behaviours or {}).items():
                self.set_behaviour(server_id, behaviour)
            self.censor.apply(nft=nft, iptables=iptables, throttle=throttle, extra=extra)
            self.rules = self.censor.listing() + "".join(
                f"server {k}: {v}\n" for k, v in (behaviours or {}).items())
            return run_probe(self.topology, self.catalog, baseline=self.baseline_file,
                             output=self.next_output())
        finally:
            self.censor.clear()
            for server_id in behaviours or {}:
                self.set_behaviour(server_id, self._behaviours[server_id])

    def next_output(self) -> Path:
        """Where the next run's JSON is kept (run-1.json, run-2.json... beside the baseline),
        to read after a failure."""
        self._runs += 1
        return self.folder / f"run-{self._runs}.json"

    def close(self) -> None:
        for servers in reversed(self._servers):
            servers.stop()
        self._servers.clear()


MakeLab = Callable[..., Lab]  # the `make_lab` fixture: (servers, targets, records=, **settings)


def expect(lab: Lab, run: ProbeRun, affected: dict[str, tuple[str, str]], *,
           network: tuple[str, str] = ("ok", "ok")) -> None:
    """Affected targets have exactly (status, reason); every target that was ok in the baseline
    and is not affected is still ok; the network verdict is `network`."""
    assert lab.baseline is not None
    was_ok = {t["name"] for t in lab.baseline.result["targets"] if t["status"] == "ok"}
    problems = []
    seen = set()
    for t in run.result["targets"]:
        seen.add(t["name"])
        got = (t["status"], t["reason"])
        want = affected.get(t["name"])
        if want is None and t["name"] in was_ok:
            want = ("ok", "ok")
        if want is not None and got != want:
            problems.append(f"  {t['name']} {t['url']}: expected {want}, got {got}: {t['detail']}"
                            f"\n      phases: {t['phases']}"
                            f"\n      diagnosis: {t['observation'].get('diagnosis')}")
    problems += [f"  {name}: not in the run" for name in affected if name not in seen]
    net = run.result["network"]
    if (net["status"], net["reason"]) != network:
        problems.append(f"  network: expected {network}, got {(net['status'], net['reason'])}:"
                        f" {net['detail']}")
    assert not problems, ("the probe's verdicts differ from the scenario:\n" + "\n".join(problems)
                          + f"\nrules:\n{getattr(lab, 'rules', '')}\nstderr:\n{run.stderr[-2000:]}")


def expect_clean_baseline(lab: Lab) -> None:
    """Every target and control works with no rules: otherwise no scenario means anything."""
    assert lab.baseline is not None
    bad = [f"  {t['name']} {t['url']}: {t['status']} {t['reason']}: {t['detail']}"
           for t in lab.baseline.result["targets"] + lab.baseline.result["network"]["controls"]
           if t["status"] != "ok"]
    assert not bad, "the baseline (no rules) is not clean:\n" + "\n".join(bad) + (
        f"\nstderr:\n{lab.baseline.stderr[-2000:]}")
