"""The base of every mock server: its sockets on one port, a stop() that ends every connection."""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
from collections.abc import Iterable
from typing import Any, Self

log = logging.getLogger(__name__)

_BIND_TRIES = 20  # UDP port 0 -> that port number on TCP too; retried if TCP has it taken


class MockServer:
    """A TCP listener, a UDP endpoint, or both on one port number (port 0: a free one).

    Subclasses call `__init__` (it refuses a behaviour or option they do not know), set
    `serves_tcp` / `serves_udp`, and write `_handle(reader, writer)` for a TCP connection,
    `datagram(data, addr)` for a UDP one.
    Whatever a client does, an exception in a handler ends only that connection or datagram,
    and stop() ends every connection still open, so no handler outlives the server.
    """

    BEHAVIOURS: tuple[str, ...] = ()
    serves_tcp: bool = True
    serves_udp: bool = False
    _ssl: ssl.SSLContext | None = None  # TLS done by asyncio itself, before `_handle`

    def __init__(self, behaviour: str, host: str, port: int, name: str, options: dict[str, Any],
                 known: Iterable[str] = ()) -> None:
        kind = type(self).__name__
        if unknown := set(options) - set(known):
            raise ValueError(f"unknown {kind} option(s) {', '.join(sorted(unknown))}")
        self.behaviour = self._check(behaviour)
        self.host, self.port, self.name = host, port, name
        self._tcp: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # connection handlers, ended by stop()

    def _check(self, behaviour: str) -> str:
        if behaviour not in self.BEHAVIOURS:
            raise ValueError(f"unknown {type(self).__name__} behaviour {behaviour!r} "
                             f"(one of {', '.join(self.BEHAVIOURS)})")
        return behaviour

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(_BIND_TRIES if self.port == 0 and self.serves_udp else 1):
            port, udp = self.port, None
            if self.serves_udp:
                udp, _ = await loop.create_datagram_endpoint(
                    lambda: _Datagrams(self), local_addr=(self.host, port))
                port = udp.get_extra_info("sockname")[1]
            try:
                tcp = await asyncio.start_server(self._connection, self.host, port,
                                                 ssl=self._ssl) if self.serves_tcp else None
            except OSError as exc:
                if udp is None:
                    raise
                udp.close()
                if exc.errno != errno.EADDRINUSE or self.port:
                    raise
                continue
            self._udp, self._tcp = udp, tcp
            self.port = tcp.sockets[0].getsockname()[1] if tcp is not None else port
            return
        raise OSError(errno.EADDRINUSE, f"no port free on both UDP and TCP at {self.host}")

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            # Aborting ends each handler's read; cancelling a stream handler instead trips
            # asyncio's own done-callback on Python 3.11, so only stragglers are cancelled.
            for writer in list(self._writers):
                writer.transport.abort()
            if self._tasks:
                _, pending = await asyncio.wait(set(self._tasks), timeout=1.0)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            await self._tcp.wait_closed()
            self._tcp = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (Exception, asyncio.CancelledError):  # noqa: BLE001, S110 - a hostile
            pass  # client must not take the server down; a handler cancelled by stop() just ends
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def datagram(self, data: bytes, addr: Any) -> None:
        raise NotImplementedError

    def _sendto(self, data: bytes, addr: Any) -> None:
        """Send a datagram unless the server has stopped (a delayed answer may come after)."""
        if self._udp is not None and not self._udp.is_closing():
            self._udp.sendto(data, addr)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, server: MockServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self.server.datagram(data, addr)
        except Exception:  # a hostile datagram must never take the server down
            log.debug("mock %s: datagram from %s dropped", type(self.server).__name__, addr,
                      exc_info=True)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors about clients that went away


async def drain_until_closed(reader: asyncio.StreamReader) -> None:
    """Read and drop whatever comes until the client closes: a server that never answers."""
    while await reader.read(65536):
        pass
