"""The references: minimal raw-asyncio clients doing what the probe's layers do, nothing more.

Each `async def <layer>(port, ca_file, n, concurrency)` performs n operations, `concurrency` at a
time, and raises if one fails. Setup a client needs (an SSL context) is done inside, as the probe
builds its own per run. Each ends a connection as the probe's layer does, since that is part of
the operation and of its cost: with RST after a tcp connect or a TLS handshake (the probe leaves
no half-closed state behind in a censor's flow table), with FIN after a whole HTTP response.
No timeouts, no facts, no result models: that is the probe's extra work, which the benchmark
prices.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import HandshakeCompleted
from servers import NAME

_STUN_COOKIE = 0x2112A442  # RFC 8489 section 5
_OPTIONAL_PADDING = 0xFF26  # comprehension-optional: every server ignores it (probe/wire/stun.py)
_FINGERPRINT, _FINGERPRINT_XOR = 0x8028, 0x5354554E


async def bounded(n: int, concurrency: int, one: Callable[[], Awaitable[None]]) -> None:
    semaphore = asyncio.Semaphore(concurrency)

    async def guarded() -> None:
        async with semaphore:
            await one()

    await asyncio.gather(*(guarded() for _ in range(n)))


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER on, zero seconds), as the probe's tcp and tls layers do."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                struct.pack("ii", 1, 0))
    writer.transport.abort()


async def tcp(port: int, ca_file: str, n: int, concurrency: int) -> None:
    async def one() -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        _reset(writer)

    await bounded(n, concurrency, one)


def _context(ca_file: str, alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


async def tls(port: int, ca_file: str, n: int, concurrency: int) -> None:
    context = _context(ca_file)

    async def one() -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                  server_hostname=NAME)
        _reset(writer)

    await bounded(n, concurrency, one)


async def https(port: int, ca_file: str, n: int, concurrency: int) -> None:
    """GET / over a fresh TLS connection per request (the probe makes one per sample)."""
    context = _context(ca_file, ["h2", "http/1.1"])
    request = f"GET / HTTP/1.1\r\nHost: {NAME}:{port}\r\nConnection: close\r\n\r\n".encode()

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                       server_hostname=NAME)
        writer.write(request)
        response = await reader.read()
        writer.close()
        if not response.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"unexpected response {response[:40]!r}")

    await bounded(n, concurrency, one)


class _StunAnswers(asyncio.DatagramProtocol):
    """Counts answers by transaction id, without decoding them."""

    def __init__(self, expected: int) -> None:
        self.pending: set[bytes] = set()
        self.expected = expected
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def send(self, transport: Any) -> None:
        tid = os.urandom(12)
        self.pending.add(tid)
        transport.sendto(struct.pack("!HHI12s", 0x0001, 0, _STUN_COOKIE, tid))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data[8:20] in self.pending:
            self.pending.discard(data[8:20])
            self.expected -= 1
            if self.expected == 0 and not self.done.done():
                self.done.set_result(None)


async def stun(port: int, ca_file: str, n: int, concurrency: int) -> None:
    """One Binding transaction per socket, as the stun layer makes one exchange per target."""
    loop = asyncio.get_running_loop()

    async def one() -> None:
        transport, client = await loop.create_datagram_endpoint(
            lambda: _StunAnswers(1), remote_addr=("127.0.0.1", port))
        try:
            client.send(transport)
            async with asyncio.timeout(5):
                await client.done
        finally:
            transport.close()

    await bounded(n, concurrency, one)


async def stun_train(port: int, n: int) -> int:
    """n Binding requests on one socket, yielding between them as the layer does; answers."""
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(
        lambda: _StunAnswers(n), remote_addr=("127.0.0.1", port))
    try:
        for _ in range(n):
            client.send(transport)
            await asyncio.sleep(0)
        try:
            async with asyncio.timeout(2):
                await client.done
        except TimeoutError:
            pass
    finally:
        transport.close()
    return n - client.expected


def padded_request(size: int) -> tuple[bytes, bytes]:
    """A Binding request of `size` bytes (a multiple of 4, at least 32): padding, then
    FINGERPRINT, as the probe's call flows send them; (datagram, transaction id)."""
    tid = os.urandom(12)
    head = struct.pack("!HHI12sHH", 0x0001, size - 20, _STUN_COOKIE, tid,
                       _OPTIONAL_PADDING, size - 32) + bytes(size - 32)
    crc = zlib.crc32(head) ^ _FINGERPRINT_XOR
    return head + struct.pack("!HHI", _FINGERPRINT, 4, crc), tid


class _CallAnswers(asyncio.DatagramProtocol):
    """Matches answers to requests by transaction id and keeps each one's round-trip time."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.sent_at: dict[bytes, float] = {}
        self.rtts: list[float] = []
        self.all_in: asyncio.Future[None] | None = None  # set once nothing is outstanding

    def datagram_received(self, data: bytes, addr: Any) -> None:
        sent = self.sent_at.pop(data[8:20], None)
        if sent is not None:
            self.rtts.append(self.loop.time() - sent)
            if not self.sent_at and self.all_in is not None and not self.all_in.done():
                self.all_in.set_result(None)


async def call_flow(port: int, rate: float, size: int, duration: float, wait: float) -> int:
    """One call-like flow: `rate` padded requests a second for `duration` s on one socket, on a
    fixed grid, answers matched; then up to `wait` s for the last answers. Returns answers."""
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(
        _CallAnswers, remote_addr=("127.0.0.1", port))
    try:
        start = loop.time()
        for seq in range(round(duration * rate)):
            delay = start + seq / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            data, tid = padded_request(size)
            client.sent_at[tid] = loop.time()
            transport.sendto(data)
        if client.sent_at:
            client.all_in = loop.create_future()
            try:
                async with asyncio.timeout(wait):
                    await client.all_in
            except TimeoutError:
                pass
    finally:
        transport.close()
    return len(client.rtts)


class _QuicHandshake(asyncio.DatagramProtocol):
    """The least a QUIC client can do: feed the core, send what it says, stop when done."""

    def __init__(self, configuration: QuicConfiguration, remote: tuple[str, int]) -> None:
        self.connection = QuicConnection(configuration=configuration)
        self.remote = remote
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.transport: Any = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.connection.connect(self.remote, now=self.loop.time())
        self.pump()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.connection.receive_datagram(data, self.remote, now=self.loop.time())
        self.pump()

    def on_timer(self) -> None:
        self.connection.handle_timer(now=self.loop.time())
        self.pump()

    def pump(self) -> None:
        while (event := self.connection.next_event()) is not None:
            if isinstance(event, HandshakeCompleted) and not self.done.done():
                self.connection.close()
                self.done.set_result(None)
        for data, _ in self.connection.datagrams_to_send(now=self.loop.time()):
            self.transport.sendto(data)
        if self.timer is not None:
            self.timer.cancel()
        timer_at = self.connection.get_timer()
        self.timer = None if timer_at is None else self.loop.call_at(timer_at, self.on_timer)


async def quic(port: int, ca_file: str, n: int, concurrency: int) -> None:
    """Handshakes (ALPN h3, certificate verified against the test CA), then CONNECTION_CLOSE."""
    loop = asyncio.get_running_loop()
    ca_pem = Path(ca_file).read_bytes()
    remote = ("127.0.0.1", port)

    async def one() -> None:
        configuration = QuicConfiguration(is_client=True, alpn_protocols=["h3"],
                                          server_name=NAME, cadata=ca_pem)
        transport, client = await loop.create_datagram_endpoint(
            lambda: _QuicHandshake(configuration, remote), remote_addr=remote)
        try:
            async with asyncio.timeout(5):
                await client.done
        finally:
            if client.timer is not None:
                client.timer.cancel()
            transport.close()

    await bounded(n, concurrency, one)


CLIENTS = {"tcp": tcp, "tls": tls, "https": https, "stun": stun, "quic": quic}
