"""The reflector's bounds: per-source and total rate limits, the flow table, its counts.

Everything here is sans-I/O and takes `now` (seconds, any monotonic origin) as an argument, so
tests step a fake clock. Memory is bounded by construction: the source and flow tables are
LRU-ordered dicts with a hard cap, each entry a fixed handful of numbers, and an idle entry is
dropped on the next insertion that finds it at the old end.

A *source* is a client address cut to its /32 (IPv4) or /64 (IPv6, one host's usual share),
stored only as a keyed 8-byte BLAKE2b digest whose key is made at start and never leaves the
process: the tables never hold an address, and a restart makes old digests meaningless.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["Flow", "FlowTable", "Limits", "Sources", "Stats", "source_address"]


@dataclass(frozen=True)
class Limits:
    """Every bound of the reflector; the defaults are what `probe reflect` runs with.

    A probe's call-like flow is ~50 datagrams/s of a few hundred bytes, and its TLS tests move
    64 KiB at a time, so the per-source limits sit one to two orders above what it needs: a
    limit that bit a legitimate probe would read as loss or throttling on the network."""

    source_packets: float = 500.0  # datagrams/s per source, checked before any parsing
    source_packet_burst: float = 1000.0
    source_bytes: float = 256 * 1024  # reply bytes/s per source (UDP replies, TCP downloads)
    source_byte_burst: float = 2 * 1024 * 1024  # room for a largest download and UDP besides
    source_volume: float = 64 * 1024 * 1024  # reply bytes per hour per source
    total_packets: float = 20_000.0  # datagrams/s from all sources together
    total_bytes: float = 12_500_000.0  # reply bytes/s in all (100 Mbit/s)
    max_sources: int = 4096
    max_flows: int = 16384
    flow_idle: float = 300.0  # seconds without a datagram before a flow may be forgotten
    max_datagram: int = 2048  # larger datagrams are dropped unread (path MTU tests fit)
    max_connections: int = 256
    source_connections: int = 8
    handshake_timeout: float = 10.0
    idle_timeout: float = 60.0  # seconds without a frame before a connection is closed
    write_timeout: float = 20.0  # seconds a client may leave our writes unread
    connection_lifetime: float = 600.0
    max_download: int = 1024 * 1024  # bytes per DOWNLOAD frame
    max_download_frames: int = 16384  # chunks per DOWNLOAD (1-byte chunks cost a write each)
    connection_download: int = 8 * 1024 * 1024  # bytes sent down per connection in all
    connection_upload: int = 64 * 1024 * 1024  # bytes accepted per connection in all


@dataclass
class Stats:
    """Counts only: what the reflector logs. No address, port or session is ever kept here."""

    datagrams: int = 0
    datagram_bytes: int = 0
    answered: int = 0
    answered_bytes: int = 0
    plain_stun: int = 0  # answered Binding requests without an echo
    oversize: int = 0
    rate_limited: int = 0  # dropped before parsing: per-source or total packet rate
    over_budget: int = 0  # parsed, counted in its flow, unanswered: reply bytes or volume
    too_small: int = 0  # a reply would have been larger than the request
    junk: int = 0
    wrong_token: int = 0
    not_for_us: int = 0  # well-formed STUN we do not answer (other methods, responses, replies)
    flows_evicted: int = 0
    connections: int = 0
    connections_refused: int = 0
    tls_failed: int = 0
    tcp_unauthenticated: int = 0
    tcp_protocol_errors: int = 0
    tcp_timeouts: int = 0
    downloads: int = 0
    downloads_refused: int = 0
    tcp_received_bytes: int = 0
    tcp_sent_bytes: int = 0
    errors: int = 0  # exceptions in a handler: each ended one datagram or one connection

    def line(self, **extra: int) -> str:
        values = {f.name: getattr(self, f.name) for f in fields(self)} | extra
        return " ".join(f"{k}={v}" for k, v in values.items() if v or k in extra)


def source_address(addr: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The client's address from a socket address tuple; an IPv4-mapped IPv6 one as IPv4."""
    address = ipaddress.ip_address(str(addr[0]).split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class _Bucket:
    """A token bucket; `take` refills by elapsed time, then spends if it can."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.stamp = now

    def take(self, amount: float, now: float, rate: float, burst: float) -> bool:
        if now > self.stamp:
            self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
            self.stamp = now
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True


class _Source:
    __slots__ = ("bytes", "packets", "volume")

    def __init__(self, limits: Limits, now: float) -> None:
        self.packets = _Bucket(limits.source_packet_burst, now)
        self.bytes = _Bucket(limits.source_byte_burst, now)
        self.volume = _Bucket(limits.source_volume, now)


class Sources:
    """Per-source and total buckets, in an LRU table of at most `max_sources` sources."""

    def __init__(self, limits: Limits, now: float, secret: bytes | None = None) -> None:
        self.limits = limits
        self._secret = secret or os.urandom(32)
        self._table: OrderedDict[bytes, _Source] = OrderedDict()
        self._packets = _Bucket(limits.total_packets, now)
        self._bytes = _Bucket(limits.total_bytes, now)
        self.connections: dict[bytes, int] = {}  # open TCP connections, per source with any

    def __len__(self) -> int:
        return len(self._table)

    def key(self, addr: Any) -> bytes:
        address = source_address(addr)
        prefix = address.packed[:8] if address.version == 6 else address.packed
        return hashlib.blake2b(prefix, key=self._secret, digest_size=8).digest()

    def _entry(self, key: bytes, now: float) -> _Source:
        entry = self._table.get(key)
        if entry is None:
            entry = self._table[key] = _Source(self.limits, now)
            if len(self._table) > self.limits.max_sources:
                self._table.popitem(last=False)
        else:
            self._table.move_to_end(key)
        return entry

    def admit(self, key: bytes, now: float) -> bool:
        """One more datagram (or connection) from this source: within the packet rates?"""
        limits = self.limits
        entry = self._entry(key, now)
        if not entry.packets.take(1, now, limits.source_packets, limits.source_packet_burst):
            return False
        return self._packets.take(1, now, limits.total_packets, limits.total_packets)

    def spend(self, key: bytes, size: int, now: float) -> bool:
        """May this source be sent `size` more bytes? Spends from its budgets if so."""
        limits = self.limits
        entry = self._entry(key, now)
        hour = limits.source_volume / 3600
        # Checked before spending, so a refusal spends nothing from any bucket.
        for bucket, rate, burst in ((entry.bytes, limits.source_bytes, limits.source_byte_burst),
                                    (entry.volume, hour, limits.source_volume),
                                    (self._bytes, limits.total_bytes, limits.total_bytes)):
            if not bucket.take(0, now, rate, burst) or bucket.tokens < size:
                return False
        for bucket in (entry.bytes, entry.volume, self._bytes):
            bucket.tokens -= size
        return True


class Flow:
    """One session's counters on one local port (modulo 2**32 when sent)."""

    __slots__ = ("received_bytes", "received_packets", "seen", "sent_bytes", "sent_packets")

    def __init__(self, now: float) -> None:
        self.received_packets = self.received_bytes = 0
        self.sent_packets = self.sent_bytes = 0
        self.seen = now


class FlowTable:
    """Flows by (local port, session), least recently seen first; at most `max_flows`."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._flows: OrderedDict[tuple[int, bytes], Flow] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._flows)

    def get(self, port: int, session: bytes, now: float) -> Flow:
        key = (port, session)
        flow = self._flows.get(key)
        if flow is not None:
            self._flows.move_to_end(key)
            flow.seen = now
            return flow
        self.expire(now)
        flow = self._flows[key] = Flow(now)
        if len(self._flows) > self.limits.max_flows:
            self._flows.popitem(last=False)  # the least recently seen, idle or not
            self.evicted += 1
        return flow

    def expire(self, now: float, budget: int = 64) -> None:
        """Forget up to `budget` flows idle for longer than `flow_idle` (oldest first)."""
        idle = now - self.limits.flow_idle
        while budget and self._flows:
            key, flow = next(iter(self._flows.items()))
            if flow.seen > idle:
                return
            del self._flows[key]
            budget -= 1
