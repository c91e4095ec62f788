"""The reflector's UDP side: what to answer to one datagram (sans-I/O), and its socket shell.

`UdpCore.handle(data, addr, port, now)` returns the reply's bytes or None, in this order:
oversize -> dropped; the source's and the total packet rate -> dropped unparsed; plain STUN
(a Binding request without an echo) -> answered, if allowed; a probe-echo request (any shape,
probe/wire/echo.py) -> counted in its flow, then answered if the reply fits in the request and
in the source's byte budgets. Everything else is dropped without an answer: junk, wrong tokens,
STUN that is not a Binding request, and every reply (so two reflectors never talk to each other).

A flow is (local port, session): its counters go up for every valid request that reaches the
decoder, answered or not, so when a limit keeps a reply back the probe sees it in the next
reply's counters (received went up, sent did not) instead of mistaking it for the network's loss.

Plain STUN replies are as the RFC has them, cut to fit: a Binding success response with
FINGERPRINT if the request had one, XOR-MAPPED-ADDRESS if it still fits, and PADDING up to the
request's size if the request carried PADDING (RFC 5780 section 7.6). A bare 20-byte request thus
gets a bare 20-byte success: the probe's stun layer counts it as an answer; the mapped address
needs a request padded to 32 bytes (IPv4) or 44 (IPv6).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from probe.reflect.limits import FlowTable, Limits, Sources, Stats, source_address
from probe.wire import echo, stun

log = logging.getLogger("probe.reflect")

PADDING = 0x0026  # RFC 5780 section 7.6
_COOKIE = stun.MAGIC_COOKIE.to_bytes(4, "big")


class UdpCore:
    """The decisions of the UDP side, for every port: no socket, time passed in."""

    def __init__(self, keys: Sequence[bytes], sources: Sources, stats: Stats, *,
                 answer_plain_stun: bool = True) -> None:
        self.keys = tuple(keys)
        self.sources = sources
        self.limits: Limits = sources.limits
        self.flows = FlowTable(self.limits)
        self.stats = stats
        self.answer_plain_stun = answer_plain_stun

    def handle(self, data: bytes, addr: Any, port: int, now: float) -> bytes | None:
        stats = self.stats
        stats.datagrams += 1
        stats.datagram_bytes += len(data)
        if len(data) > self.limits.max_datagram:
            stats.oversize += 1
            return None
        source = self.sources.key(addr)
        if not self.sources.admit(source, now):
            stats.rate_limited += 1
            return None
        message = None
        if len(data) >= stun.HEADER_SIZE and data[4:8] == _COOKIE and data[0] < 0x40:
            try:
                message = stun.decode_message(data)
            except stun.StunCodecError:
                message = None  # perhaps a random-shaped datagram: tried below
        if message is not None and not echo.is_echo_stun(message):
            reply = self._plain_stun(message, len(data), addr, source, now)
        else:
            reply = self._echo(data, message, addr, port, source, now)
        if reply is not None:
            if len(reply) > len(data):  # the promise of the whole server, kept even if a bug
                stats.errors += 1  # elsewhere breaks it: such a reply is never sent
                return None
            stats.answered += 1
            stats.answered_bytes += len(reply)
        return reply

    def _echo(self, data: bytes, message: stun.Message | None, addr: Any, port: int,
              source: bytes, now: float) -> bytes | None:
        stats = self.stats
        try:
            if message is not None:
                decoded = echo.decode_stun(message, len(data), self.keys)
            else:
                decoded = echo.decode(data, self.keys)
        except echo.TagMismatch:
            stats.wrong_token += 1
            return None
        except echo.EchoCodecError:
            stats.junk += 1
            return None
        request = decoded.message
        if not isinstance(request, echo.EchoRequest):
            stats.not_for_us += 1
            return None
        flow = self.flows.get(port, request.session, now)
        stats.flows_evicted = self.flows.evicted
        flow.received_packets += 1
        flow.received_bytes += len(data)
        address = source_address(addr)
        mapped = (address, int(addr[1])) if decoded.shape is echo.Shape.STUN else None
        size = echo.reply_size(decoded.shape, len(data), request.reply_size,
                               address.version if mapped else 6)
        if size is None:
            stats.too_small += 1
            return None
        if not self.sources.spend(source, size, now):
            stats.over_budget += 1
            return None
        u32 = 0xFFFFFFFF
        reply = echo.EchoReply(request.session, request.seq,
                               flow.received_packets & u32, flow.received_bytes & u32,
                               flow.sent_packets & u32, flow.sent_bytes & u32)
        out = echo.encode_reply(reply, decoded.shape, size, decoded.key, nonce=decoded.nonce,
                                mapped=mapped)
        flow.sent_packets += 1
        flow.sent_bytes += len(out)
        return out

    def _plain_stun(self, message: stun.Message, size: int, addr: Any, source: bytes,
                    now: float) -> bytes | None:
        stats = self.stats
        if message.cls != stun.Class.REQUEST or message.method != stun.Method.BINDING:
            stats.not_for_us += 1
            return None
        if not self.answer_plain_stun:
            stats.wrong_token += 1  # it carries no token, and this reflector requires one
            return None
        address = source_address(addr)
        room = size - stun.HEADER_SIZE
        attributes: list[stun.Attribute] = []
        fingerprint = bool(message.attributes) and isinstance(message.attributes[-1],
                                                              stun.Fingerprint)
        if fingerprint:
            room -= 8  # the request's FINGERPRINT (8 bytes) is in `size`: the reply's fits
        mapped = 4 + len(address.packed) + 4
        if mapped <= room:
            attributes.append(stun.XorMappedAddress(address, int(addr[1])))
            room -= mapped
        has_padding = any(isinstance(a, stun.UnknownAttribute) and a.type == PADDING
                          for a in message.attributes)
        if has_padding and room >= 4:
            attributes.append(stun.UnknownAttribute(PADDING, bytes(room - 4)))
        if fingerprint:
            attributes.append(stun.Fingerprint())
        reply = stun.encode_message(stun.Message(message.method, stun.Class.SUCCESS,
                                                 message.transaction_id, tuple(attributes)))
        if not self.sources.spend(source, len(reply), now):
            stats.over_budget += 1
            return None
        stats.plain_stun += 1
        return reply


class UdpPort(asyncio.DatagramProtocol):
    """One UDP socket: feeds the core, sends what it returns."""

    def __init__(self, core: UdpCore, clock: Callable[[], float]) -> None:
        self.core = core
        self.clock = clock
        self.port = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.port = int(transport.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            reply = self.core.handle(data, addr, self.port, self.clock())
            if reply is not None and self.transport is not None:
                self.transport.sendto(reply, addr)
        except Exception as exc:  # noqa: BLE001 - a hostile datagram must never take the server down
            self.core.stats.errors += 1
            log.debug("reflect: a datagram raised %s", type(exc).__name__)  # no address

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors about clients that went away
