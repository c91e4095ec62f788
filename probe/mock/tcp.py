"""Plain TCP mock servers: a listener that accepts (and optionally echoes), one that drops SYNs, a closed port.

Behaviours:
  ok      accept, read and discard until the client closes
  echo    accept and send back what arrives
  silent  never answer a SYN: a listener whose accept queue is kept full. Linux drops a SYN
          outright when the accept queue of the listener is full (tcp_conn_request:
          "sk_acceptq_is_full -> drop"), which is exactly what a censor's silent drop looks like
          from the client: no SYN-ACK, no RST. start() fills the queue and proves it by one
          connect that must time out.
  refuse  a bound port with no listener: the kernel answers every SYN with RST. Keeping it bound
          stops anyone else from taking the port while the test runs.
`silent` and `refuse` shape the listening socket itself, so they are chosen at start(); `ok` and
`echo` are read per connection and may be switched while running.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any, Self

from probe.mock.certs import TestCA

# How long the self-check connect waits for a SYN-ACK before taking the SYN as dropped.
_DROP_CHECK_S = 0.3
_MAX_FILLERS = 16


def _rst_close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class TCPServer:
    """A TCP listener on a real socket; see the module docstring for the behaviours."""

    BEHAVIOURS: tuple[str, ...] = ("ok", "echo", "silent", "refuse")

    def __init__(
        self,
        behaviour: str = "ok",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ca: TestCA | None = None,  # unused: plain TCP; accepted for the common signature
        name: str = "mock.test",
        **options: Any,
    ) -> None:
        if behaviour not in self.BEHAVIOURS:
            raise ValueError(f"unknown tcp behaviour {behaviour!r} (one of {self.BEHAVIOURS})")
        if options:
            raise ValueError(f"unknown tcp option(s) {', '.join(sorted(options))}")
        self.behaviour = behaviour
        self.host = host
        self.port = port
        self.name = name
        self._server: asyncio.Server | None = None
        self._socket: socket.socket | None = None  # the listener (silent) or bound port (refuse)
        self._fillers: list[socket.socket] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # connection handlers, ended by stop()

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        if self.behaviour == "refuse":
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.bind((self.host, self.port))  # bound, never listening: SYN -> RST
            self._socket = sock
            self.port = sock.getsockname()[1]
        elif self.behaviour == "silent":
            await self._start_silent(family)
        else:
            self._server = await asyncio.start_server(self._connection, self.host, self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    async def _start_silent(self, family: int) -> None:
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.bind((self.host, self.port))
        listener.listen(0)  # the smallest queue Linux allows: one connection
        self._socket = listener
        address = listener.getsockname()[:2]
        self.port = address[1]
        loop = asyncio.get_running_loop()
        for _ in range(_MAX_FILLERS):
            filler = socket.socket(family, socket.SOCK_STREAM)
            filler.setblocking(False)
            try:
                async with asyncio.timeout(_DROP_CHECK_S):
                    await loop.sock_connect(filler, address)
            except TimeoutError:
                filler.close()  # never answered: the queue is full and SYNs are dropped
                return
            self._fillers.append(filler)
        await self.stop()
        raise RuntimeError("could not fill the accept queue: this kernel does not drop SYNs")

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while data := await reader.read(65536):
                if self.behaviour == "echo":
                    writer.write(data)
                    await writer.drain()
        except (Exception, asyncio.CancelledError):  # noqa: BLE001, S110 - a hostile
            pass  # client must not take the server down; a handler cancelled by stop() just ends
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            if self._tasks:
                _, pending = await asyncio.wait(set(self._tasks), timeout=1.0)
                for task in pending:
                    task.cancel()
            await self._server.wait_closed()
            self._server = None
        for filler in self._fillers:
            _rst_close(filler)
        self._fillers.clear()
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
