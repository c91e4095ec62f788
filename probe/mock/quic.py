"""A QUIC mock server that misbehaves on purpose: aioquic's sans-I/O core on a plain UDP socket.

Behaviours (read per datagram, so they may be switched while running):
  ok           handshake completes with a certificate from the TestCA for `name`; ALPN h3
  silent       the port is bound, nothing is ever sent back
  close        right after the client's Initial, CONNECTION_CLOSE with a transport error code
               (`close_code`, default 0x2 CONNECTION_REFUSED) and reason (`close_reason`)
  alpn_refuse  offers only an ALPN no client asks for: aioquic closes with no_application_protocol
  untrusted    a certificate for `name` from a second CA the client does not trust
  wrong_name   a certificate from the trusted CA, for another name
  vn_only      answers a reserved-version ping with Version Negotiation and drops every Initial
               of a real version: what SNI-keyed QUIC blocking looks like (the ping has no SNI)
  junk         answers every datagram with random bytes: a hostile or broken peer
Every behaviour but silent and junk answers unknown versions with Version Negotiation, as real
servers do. Connections are keyed by the client's address: each probe sample uses a new socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from dataclasses import dataclass, field
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated
from aioquic.quic.packet import QuicErrorCode, QuicFrameType
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from probe.mock.certs import Leaf, TestCA
from probe.mock.server import MockServer
from probe.wire.quic import (
    MIN_DATAGRAM,
    QuicCodecError,
    VersionNegotiation,
    decode_long_header,
    encode_version_negotiation,
)

log = logging.getLogger(__name__)

REFUSED_ALPN = "probe-mock-refuses-every-client"
_MAX_CONNECTIONS = 4096  # a flood of Initials must not grow memory without bound


@dataclass
class _Peer:
    """One client connection: the aioquic core and its timer."""

    connection: QuicConnection
    timer: asyncio.TimerHandle | None = None
    closed: bool = field(default=False)


class QuicServer(MockServer):
    """A QUIC server on a real UDP socket; see the module docstring for the behaviours."""

    BEHAVIOURS: tuple[str, ...] = (
        "ok", "silent", "close", "alpn_refuse", "untrusted", "wrong_name", "vn_only", "junk",
    )
    serves_tcp, serves_udp = False, True

    def __init__(
        self,
        behaviour: str = "ok",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ca: TestCA | None = None,
        name: str = "mock.test",
        **options: Any,
    ) -> None:
        super().__init__(behaviour, host, port, name, options,
                         ("alpn", "close_code", "close_reason"))
        self.ca = ca or TestCA()
        self.alpn: list[str] = list(options.get("alpn", ["h3"]))
        self.close_code: int = int(options.get("close_code", QuicErrorCode.CONNECTION_REFUSED))
        self.close_reason: str = str(options.get("close_reason", "closed by the mock server"))
        self._peers: dict[Any, _Peer] = {}
        self._configurations: dict[str, QuicConfiguration] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        trusted = self.ca.issue(self.name, self.host)
        untrusted = TestCA("probe untrusted CA").issue(self.name, self.host)
        other = self.ca.issue("not-" + self.name)
        self._configurations = {
            "ok": self._configuration(trusted, self.alpn),
            "close": self._configuration(trusted, self.alpn),
            "alpn_refuse": self._configuration(trusted, [REFUSED_ALPN]),
            "untrusted": self._configuration(untrusted, self.alpn),
            "wrong_name": self._configuration(other, self.alpn),
        }
        self._loop = asyncio.get_running_loop()
        await super().start()

    async def stop(self) -> None:
        for peer in self._peers.values():
            if peer.timer is not None:
                peer.timer.cancel()
        self._peers.clear()
        await super().stop()

    @staticmethod
    def _configuration(leaf: Leaf, alpn: list[str]) -> QuicConfiguration:
        configuration = QuicConfiguration(is_client=False, alpn_protocols=alpn, idle_timeout=10.0)
        configuration.certificate = x509.load_pem_x509_certificate(leaf.cert_pem)
        configuration.private_key = load_pem_private_key(leaf.key_pem, password=None)
        return configuration

    # --- datagrams ---------------------------------------------------------------------------

    def datagram(self, data: bytes, addr: Any) -> None:
        behaviour = self.behaviour
        if behaviour == "silent":
            return
        if behaviour == "junk":
            self._sendto(os.urandom(random.randint(1, MIN_DATAGRAM)), addr)
            return
        peer = self._peers.get(addr)
        if peer is None:
            peer = self._accept(data, addr, behaviour)
            if peer is None:
                return
        else:
            peer.connection.receive_datagram(data, addr, now=self._now())
        self._pump(peer, addr)

    def _accept(self, data: bytes, addr: Any, behaviour: str) -> _Peer | None:
        """A new connection for a client's first Initial, or None (after answering a ping)."""
        try:
            header = decode_long_header(data)
        except QuicCodecError:
            return None  # a short header for a connection we do not know
        supported = self._configurations["ok"].supported_versions
        if header.version not in supported:
            if header.version != 0:  # never answer a Version Negotiation packet
                reply = VersionNegotiation(header.scid, header.dcid, tuple(supported))
                self._sendto(encode_version_negotiation(reply), addr)
            return None
        # RFC 9000 section 14.1: an Initial in a datagram under 1200 bytes is dropped.
        if behaviour == "vn_only" or len(data) < MIN_DATAGRAM:
            return None
        if len(self._peers) >= _MAX_CONNECTIONS:
            return None
        configuration = self._configurations.get(behaviour, self._configurations["ok"])
        connection = QuicConnection(
            configuration=configuration, original_destination_connection_id=header.dcid)
        peer = _Peer(connection)
        self._peers[addr] = peer
        connection.receive_datagram(data, addr, now=self._now())
        if behaviour == "close":
            # A transport close (with a frame type) keeps its code and reason in the Initial
            # packet; an application close there would be rewritten to APPLICATION_ERROR.
            connection.close(error_code=self.close_code, frame_type=QuicFrameType.PADDING,
                             reason_phrase=self.close_reason)
        return peer

    def _pump(self, peer: _Peer, addr: Any) -> None:
        """Send what the core wants sent, forget it once terminated, else re-arm its timer."""
        connection = peer.connection
        for data, _ in connection.datagrams_to_send(now=self._now()):
            self._sendto(data, addr)
        while (event := connection.next_event()) is not None:
            if isinstance(event, ConnectionTerminated):
                peer.closed = True
        if peer.timer is not None:
            peer.timer.cancel()
            peer.timer = None
        if peer.closed:
            if self._peers.get(addr) is peer:
                del self._peers[addr]
            return
        timer_at = connection.get_timer()
        if timer_at is not None and self._loop is not None:
            peer.timer = self._loop.call_at(timer_at, self._on_timer, peer, addr)

    def _on_timer(self, peer: _Peer, addr: Any) -> None:
        peer.timer = None
        try:
            peer.connection.handle_timer(now=self._now())
            self._pump(peer, addr)
        except Exception:  # forget a connection the core cannot go on with
            log.debug("quic mock: connection from %s dropped", addr, exc_info=True)
            if self._peers.get(addr) is peer:
                del self._peers[addr]

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()
