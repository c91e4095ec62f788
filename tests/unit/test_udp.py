"""The light UDP transport of the layers: datagrams, ICMP errors and closing, on loopback."""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

from probe.failures import LOCAL_LIMIT, classify_udp_error
from probe.layers.udp import open_udp


class Recorder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: Any = None
        self.datagrams: list[bytes] = []
        self.errors: list[Exception] = []
        self.arrived = asyncio.Event()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams.append(data)
        self.arrived.set()

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)
        self.arrived.set()


def test_datagrams_both_ways_and_only_from_the_peer() -> None:
    async def main() -> None:
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        try:
            transport, protocol = open_udp(Recorder, "127.0.0.1", peer.getsockname()[1])
            assert protocol.transport is transport
            transport.sendto(b"ping")
            data, addr = peer.recvfrom(100)
            assert data == b"ping"
            assert transport.get_extra_info("sockname") == addr
            stranger.sendto(b"not from the peer", addr)  # a connected socket drops it
            peer.sendto(b"pong", addr)
            await asyncio.wait_for(protocol.arrived.wait(), 5)
            assert protocol.datagrams == [b"pong"]
            transport.close()
            assert transport.is_closing()
            transport.sendto(b"after close")  # ignored, not an error
            peer.settimeout(0.2)
            try:
                assert peer.recv(100) != b"after close"
            except TimeoutError:
                pass
        finally:
            peer.close()
            stranger.close()

    asyncio.run(main())


def test_icmp_port_unreachable_reaches_error_received() -> None:
    async def main() -> None:
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()  # nobody listens there now: the kernel answers with ICMP
        transport, protocol = open_udp(Recorder, "127.0.0.1", port)
        try:
            transport.sendto(b"anyone?")
            await asyncio.wait_for(protocol.arrived.wait(), 5)
            assert protocol.datagrams == []
            assert [getattr(e, "errno", None) for e in protocol.errors] == [errno.ECONNREFUSED]
            assert classify_udp_error(protocol.errors[0])[0] == "port_unreachable"
        finally:
            transport.close()

    asyncio.run(main())


def test_a_full_send_buffer_is_a_local_limit() -> None:
    assert classify_udp_error(BlockingIOError(errno.EAGAIN, "busy"))[0] == LOCAL_LIMIT
