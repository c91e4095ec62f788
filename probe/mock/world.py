"""A mock world: the servers a scenario file asks for, and the catalog that probes them.

A scenario lists endpoints, each a kind of server (tcp, tls, https, quic, stun, turn, dns, doh)
with a behaviour from its mock module. The world starts them on one address, makes a test CA,
and writes the catalog a user's CI (or `probe demo`) runs against them. When the scenario has a
`dns` endpoint, every name resolves through it (so a lying resolver can be played); otherwise
targets carry `address:` and skip DNS.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from probe.mock.certs import TestCA

# kind -> (module, class) of its server; the URL scheme a target uses for it.
SERVERS: dict[str, tuple[str, str]] = {
    "tcp": ("probe.mock.tcp", "TCPServer"),
    "tls": ("probe.mock.tls", "TLSServer"),
    "https": ("probe.mock.tls", "HTTPSServer"),
    "quic": ("probe.mock.quic", "QuicServer"),
    "stun": ("probe.mock.stun", "StunServer"),
    "turn": ("probe.mock.stun", "StunServer"),
    "dns": ("probe.mock.dns", "DnsServer"),
    "doh": ("probe.mock.dns", "DohServer"),
}
Kind = Literal["tcp", "tls", "https", "quic", "stun", "turn", "dns", "doh"]


class Endpoint(BaseModel):
    """One server of the scenario, and where its target sits in the generated catalog."""

    model_config = ConfigDict(extra="forbid")

    kind: Kind
    behaviour: str = "ok"
    name: str = "mock.test"  # certificate name and SNI; resolved by the scenario's dns endpoint
    port: int = 0
    options: dict[str, Any] = {}
    platform: str | None = None  # None with no control: the endpoint serves the catalog itself
    feature: str | None = None
    control: bool = False
    path: str = "/"
    target: dict[str, Any] = {}  # extra target options for the catalog (sustain, expect, ...)


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    listen: str = "127.0.0.1"
    settings: dict[str, Any] = {}
    names: dict[str, str] = {}  # platform id -> display name
    endpoints: list[Endpoint] = Field(min_length=1)


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario file; CatalogError lists every problem (duplicate keys too),
    each at file:line:col, as for a catalog. OSError if it cannot be read."""
    from probe import yamlpos

    text = Path(path).read_text(encoding="utf-8", errors="replace")
    scenario, _ = yamlpos.validate(Scenario, text, str(path))
    return scenario


class World:
    """The running servers of a scenario; `catalog_yaml()` is the catalog that probes them."""

    def __init__(self, scenario: Scenario, folder: Path | None = None) -> None:
        self.scenario = scenario
        self._tmp = None if folder else tempfile.TemporaryDirectory(prefix="probe-mock-")
        self.folder = Path(folder or self._tmp.name)  # type: ignore[union-attr]
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ca = TestCA("probe mock CA")
        self.ca_file = self.ca.write_ca(self.folder / "mock-ca.pem")
        self.servers: list[Any] = []

    def _server(self, index: int, endpoint: Endpoint) -> Any:
        """The server an endpoint asks for; UsageError (one line) for a behaviour or an option
        its kind does not have, naming those it has."""
        from probe.errors import UsageError

        module_name, class_name = SERVERS[endpoint.kind]
        cls = getattr(importlib.import_module(module_name), class_name)
        where = f"endpoints[{index}] ({endpoint.kind} {endpoint.name})"
        if endpoint.behaviour not in cls.BEHAVIOURS:
            raise UsageError(f"{where}: no behaviour {endpoint.behaviour!r} for kind "
                             f"{endpoint.kind}; it has: {', '.join(cls.BEHAVIOURS)}")
        options = dict(endpoint.options)
        if endpoint.kind == "dns":
            options.setdefault("records", self._records())
        if endpoint.kind == "doh":
            options.setdefault("records", self._records())
        try:
            return cls(endpoint.behaviour, host=self.scenario.listen, port=endpoint.port,
                       ca=self.ca, name=endpoint.name, **options)
        except (TypeError, ValueError) as exc:  # an option its kind does not take, or its value
            raise UsageError(f"{where}: {exc}") from None

    def _records(self) -> dict[str, list[str]]:
        return {e.name: [self.scenario.listen] for e in self.scenario.endpoints}

    async def start(self) -> None:
        """Start every server; UsageError (one line) when one cannot listen (a port in use, an
        address not on this host), after stopping those already started."""
        from probe.errors import UsageError

        try:
            for index, endpoint in enumerate(self.scenario.endpoints):
                server = self._server(index, endpoint)
                try:
                    await server.start()
                except OSError as exc:
                    port = endpoint.port or "a free port"
                    why = os.strerror(exc.errno) if exc.errno else str(exc)
                    raise UsageError(
                        f"endpoints[{index}] ({endpoint.kind} {endpoint.name}): cannot listen "
                        f"on {self.scenario.listen} port {port}: {why}") from None
                self.servers.append(server)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for server in reversed(self.servers):
            await server.stop()
        self.servers.clear()

    def server(self, index: int) -> Any:
        return self.servers[index]

    def set_behaviour(self, index: int, behaviour: str) -> None:
        server = self.servers[index]
        if behaviour not in server.BEHAVIOURS:
            raise ValueError(f"{type(server).__name__} has no behaviour {behaviour!r}")
        server.behaviour = behaviour

    def _find(self, kind: str) -> tuple[Endpoint, Any] | None:
        for endpoint, server in zip(self.scenario.endpoints, self.servers, strict=True):
            if endpoint.kind == kind:
                return endpoint, server
        return None

    def _host(self) -> str:
        listen = self.scenario.listen
        return f"[{listen}]" if ":" in listen else listen

    def catalog(self) -> dict[str, Any]:
        """The catalog as plain data."""
        settings: dict[str, Any] = {"ca_file": str(self.ca_file), **self.scenario.settings}
        dns = self._find("dns")
        doh = self._find("doh")
        if dns:
            settings["resolver"] = f"{self._host()}:{dns[1].port}"
        if doh:
            # An IP literal: the DoH server's own name must not need a resolver to be found.
            settings["doh"] = f"https://{self._host()}:{doh[1].port}/dns-query"
        controls: list[Any] = []
        platforms: dict[str, Any] = {}
        for endpoint, server in zip(self.scenario.endpoints, self.servers, strict=True):
            if endpoint.kind in ("dns", "doh") and not (endpoint.platform or endpoint.control):
                continue
            target = {"url": self._url(endpoint, server), **endpoint.target}
            if not dns and endpoint.kind not in ("stun", "turn"):
                target["address"] = self.scenario.listen
            if endpoint.control:
                controls.append(target)
                continue
            platform = platforms.setdefault(endpoint.platform or "mock", {
                "name": self.scenario.names.get(endpoint.platform or "mock", endpoint.platform),
                "features": {},
            })
            platform["features"].setdefault(endpoint.feature or endpoint.kind, []).append(target)
        return {"version": 1, "settings": settings, "controls": controls, "platforms": platforms}

    def _url(self, endpoint: Endpoint, server: Any) -> str:
        port = server.port
        if endpoint.kind in ("stun", "turn"):
            return f"{endpoint.kind}://{self._host()}:{port}"
        if endpoint.kind in ("dns", "doh"):
            return f"dns://{endpoint.name}"
        if endpoint.kind == "https":
            return f"https://{endpoint.name}:{port}{endpoint.path}"
        return f"{endpoint.kind}://{endpoint.name}:{port}"

    def catalog_yaml(self) -> str:
        import io

        from ruamel.yaml import YAML

        out = io.StringIO()
        yaml = YAML(typ="safe", pure=True)
        yaml.default_flow_style = False
        yaml.sort_base_mapping_type_on_output = False  # type: ignore[assignment]
        yaml.dump(self.catalog(), out)
        return "# generated by `probe mock`: the catalog that probes this mock world\n" + out.getvalue()

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def serve_forever(scenario: Scenario, catalog_out: Path | None, folder: Path | None) -> int:
    """Start the world, publish its catalog, serve until SIGINT/SIGTERM; returns an exit code.
    A world that cannot start raises UsageError (one line), as does a catalog it cannot write."""
    import signal
    import sys

    from probe.errors import UsageError
    from probe.results import write_atomic

    if catalog_out is not None and not (catalog_out.parent or Path(".")).is_dir():
        raise UsageError(f"--catalog-out {catalog_out}: there is no folder {catalog_out.parent}")

    async def main() -> None:
        world = World(scenario, folder)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await world.start()
            text = world.catalog_yaml()
            if catalog_out is None:
                sys.stdout.write(text)
                sys.stdout.flush()
            else:
                try:
                    write_atomic(catalog_out, text)
                except OSError as exc:
                    raise UsageError(f"--catalog-out {catalog_out}: "
                                     f"{exc.strerror or exc}") from None
            sys.stderr.write(f"probe mock: {len(world.servers)} endpoints on {scenario.listen}; "
                             "Ctrl-C to stop\n")
            await stop.wait()
        finally:
            await world.stop()
            world.close()

    from probe import loop

    loop.run(main())
    return 0
