"""Connected UDP sockets read through the event loop's reader callback: a light datagram transport.

The stun, turn and dns layers open one UDP socket per target and exchange a few datagrams on it.
asyncio's own datagram transport costs more to open than such an exchange costs to run (a
transport, a waiter future and three loop callbacks before the first send, and a 256 KiB buffer
for every datagram received): in the benchmark it was a third of a STUN check's CPU. This is
the part of it the layers use, on a connected non-blocking socket: `sendto`, `close`,
`get_extra_info("sockname")`, and the protocol's `connection_made`, `datagram_received` and
`error_received`, called as asyncio calls them.

Connected, so that the kernel drops datagrams from anyone but the peer and reports an ICMP error
(port unreachable as ECONNREFUSED, host unreachable...) on the next send or receive: it reaches
`error_received`, as it does with asyncio's transport. A datagram the send buffer cannot take is
lost, as it would be on the network, and reported the same way (EAGAIN: a local limit).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from probe.scrub import remember_socket

MAX_DATAGRAM = 65535

P = TypeVar("P", bound=asyncio.DatagramProtocol)


class UDPSocket(asyncio.DatagramTransport):
    """A connected UDP socket whose datagrams and errors go to a protocol."""

    def __init__(self, sock: socket.socket, protocol: asyncio.DatagramProtocol) -> None:
        super().__init__()
        self._sock = sock
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._peer: tuple[Any, ...] = sock.getpeername()  # connected: every datagram is its

    def _readable(self) -> None:
        # One datagram per wake-up, as asyncio reads: the loop calls again while more wait
        # (a flood cannot starve other targets), and no extra recv() ends in EAGAIN.
        try:
            data = self._sock.recv(MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # an ICMP error for an earlier datagram
            self._protocol.error_received(exc)
            return
        self._protocol.datagram_received(data, self._peer)

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closed:
            return
        try:
            self._sock.send(data)
        except OSError as exc:  # ICMP error of an earlier datagram, or a full send buffer
            self._protocol.error_received(exc)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._sock.getsockname()
        if name == "socket":
            return self._sock
        return default

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()

    abort = close


def open_udp(protocol_factory: Callable[[], P], address: str, port: int) -> tuple[UDPSocket, P]:
    """A UDP socket connected to address:port (an IP literal), read by the protocol.

    Raises OSError when the socket cannot be made or connected (no IPv6 here, no route).
    """
    protocol = protocol_factory()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect((address, port))  # UDP: no packet sent, the kernel only picks a route
    except BaseException:
        sock.close()
        raise
    remember_socket(sock)  # our source port: never to be stored, whatever a server echoes
    transport = UDPSocket(sock, protocol)
    transport._loop.add_reader(sock.fileno(), transport._readable)
    try:
        protocol.connection_made(transport)  # may send at once (QUIC's Initial)
    except BaseException:
        transport.close()
        raise
    return transport, protocol
