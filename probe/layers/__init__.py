"""The layers: one module per scheme, each `async def measure(job, ctx) -> Sample`.

A layer measures every layer below it too (https: dns -> tcp -> tls -> http), recording each as a
Phase of the sample and stopping at the first failure. Layers own their per-operation timeouts
(`job.timeout` for each connect, handshake, query or wait); the engine owns attempts, concurrency
and cancellation. Modules are imported only when a scheme is used, so start-up stays fast.
"""

from __future__ import annotations

import importlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from probe.catalog import Job, Settings
    from probe.observations import Sample

Measure = Callable[["Job", "Context"], Awaitable["Sample"]]

# scheme -> module under probe.layers
LAYERS = {
    "dns": "dns",
    "tcp": "tcp",
    "tls": "tls",
    "https": "http",
    "quic": "quic",
    "stun": "stun",
    "turn": "turn",
}


def layer_module(scheme: str) -> ModuleType | None:
    """The module measuring a scheme, or None when that layer is not built."""
    try:
        return importlib.import_module(f"probe.layers.{LAYERS[scheme]}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("probe.layers."):
            return None
        raise


@dataclass
class Context:
    """What every layer shares within a run: settings and a few caches."""

    settings: Settings
    include_ip: bool = False  # the user asked to keep addresses that could identify them
    _ssl: dict[tuple[Any, ...], ssl.SSLContext] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)  # per-run caches owned by layers

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
