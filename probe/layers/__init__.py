"""The layers: one module per scheme, each exporting one declared `LAYER` (a `Layer`).

A layer measures every layer below it too (https: dns -> tcp -> tls -> http), recording each
layer's typed facts in the sample and stopping at the first failure. Layers own their
per-operation timeouts (`job.timeout` for each connect, handshake, query or wait); the engine
owns attempts, concurrency, deadlines and cancellation, and knows a layer only through its
`Layer`: how to measure, the most one sample may take, the diagnosis steps to take after every
sample failed, and whether its attempts are one exchange. Modules are imported only when a
scheme is used (`LazyLayers`), so start-up stays fast.
"""

from __future__ import annotations

import asyncio
import importlib
import ssl
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from probe.scrub import Scrubber

if TYPE_CHECKING:
    from probe.catalog import Job, Settings
    from probe.observations import Facts, Observation, Sample

Measure = Callable[["Job", "Context"], Awaitable["Sample"]]
Diagnose = Callable[["Job", "Context", "Observation"], Awaitable["list[Facts]"]]


@dataclass(frozen=True)
class Layer:
    """Everything the engine knows of a layer."""

    measure: Measure
    budget: Callable[[Job], float]  # seconds one sample may take (the engine's safety net)
    diagnose: Diagnose | None = None  # steps after every sample failed, keyed by their KEY
    # whether a job's `attempts` are requests of one exchange (stun), not separate samples
    one_exchange: Callable[[Job], bool] = lambda job: False


# scheme -> module under probe.layers that exports LAYER
MODULES = {
    "dns": "dns",
    "tcp": "tcp",
    "tls": "tls",
    "https": "http",
    "quic": "quic",
    "stun": "stun",
    "turn": "turn",
    "reflect": "reflect",
}


class LazyLayers(Mapping[str, Layer]):
    """The layers by scheme, each module imported the first time its scheme is asked for."""

    def __init__(self) -> None:
        self._loaded: dict[str, Layer] = {}

    def __getitem__(self, scheme: str) -> Layer:
        layer = self._loaded.get(scheme)
        if layer is None:
            module = importlib.import_module(f"probe.layers.{MODULES[scheme]}")
            layer = self._loaded[scheme] = module.LAYER
        return layer

    def __iter__(self) -> Iterator[str]:
        return iter(MODULES)

    def __len__(self) -> int:
        return len(MODULES)


@dataclass
class NetworkWatch:
    """Whether the network looks down: every control's first sample failed and none has
    worked. A target's failed sample is then not repeated (every failing verdict will be
    `inconclusive network.down`) once the controls have ended without one working: a control's
    repeat is what tells a dead network from an outage at the start of the run (when one works,
    the targets go on), and while the network looks down each control repeats once, so no
    network costs two timeouts. A target's failed sample waits for the controls' first samples
    before it is repeated, and, when those all failed, for the controls to end."""

    controls: int = 0  # controls in the run
    first_failed: int = 0  # of them, how many failed their first sample
    first_in: int = 0  # of them, how many have their first sample
    ended: int = 0  # of them, how many took all their samples
    worked: bool = False  # any control sample worked
    _first: asyncio.Event = field(default_factory=asyncio.Event)
    _end: asyncio.Event = field(default_factory=asyncio.Event)

    def control_sample(self, first: bool, ok: bool) -> None:
        if ok:
            self.worked = True
        if first:
            self.first_in += 1
            self.first_failed += not ok
        self._update()

    def control_ended(self) -> None:
        self.ended += 1
        self._update()

    def _update(self) -> None:
        if self.worked or self.first_in >= self.controls:
            self._first.set()
        if self.worked or self.ended >= self.controls:
            self._end.set()

    @property
    def down(self) -> bool:
        return bool(self.controls) and not self.worked and self.first_failed >= self.controls

    async def dead(self) -> bool:
        """Whether the network is down, for a target whose sample failed: known once the
        controls' first samples are in, and, if they all failed, once the controls ended."""
        if not self.controls:
            return False
        await self._first.wait()
        if self.down:
            await self._end.wait()
        return self.down


# A name nobody blocks: IANA's reserved example domain (RFC 2606), for the SNI controls of the
# tls and quic layers. Override with `settings.control_sni` when a network treats it specially.
DEFAULT_CONTROL_SNI = "example.com"


@dataclass
class Context:
    """What every layer shares within a run: settings and a few caches."""

    settings: Settings
    include_ip: bool = False  # the user asked to keep addresses that could identify them
    scrubber: Scrubber = field(default_factory=Scrubber)  # knows this run's own addresses
    # name -> the addresses a baseline's resolver gave it: tried when the name fails at DNS
    known_addresses: dict[str, list[str]] = field(default_factory=dict)
    started: float | None = None  # the loop's time when the run began
    network: NetworkWatch = field(default_factory=NetworkWatch)
    _ssl: dict[tuple[Any, ...], ssl.SSLContext] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)  # per-run caches owned by layers

    @property
    def control_sni(self) -> str:
        return self.settings.control_sni or DEFAULT_CONTROL_SNI

    def ssl_context(
        self, ca_files: tuple[str, ...] = (), *, verify: bool = True, alpn: tuple[str, ...] = ()
    ) -> ssl.SSLContext:
        """A client TLS context trusting the system store plus `ca_files`, or with `verify`
        off trusting nothing and checking nothing; built once per key."""
        key = (ca_files, verify, alpn)
        context = self._ssl.get(key)
        if context is None:
            if verify:
                context = ssl.create_default_context()
                for ca in ca_files:
                    context.load_verify_locations(cafile=ca)
            else:  # the system store would go unread, and it takes ~25 ms to load
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if alpn:
                context.set_alpn_protocols(list(alpn))
            self._ssl[key] = context
        return context

    async def aclose(self) -> None:
        """Close what layers left open for reuse within the run (HTTP clients and the like)."""
        for value in list(self.cache.values()):
            close = getattr(value, "aclose", None)
            if close is not None:
                await close()
        self.cache.clear()
