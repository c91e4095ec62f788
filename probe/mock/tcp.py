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
from typing import Any

from probe.mock.certs import TestCA
from probe.mock.server import MockServer

# How long the self-check connect waits for a SYN-ACK before taking the SYN as dropped.
_DROP_CHECK_S = 0.3
_MAX_FILLERS = 16


def _rst_close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class TCPServer(MockServer):
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
        super().__init__(behaviour, host, port, name, options)
        self._socket: socket.socket | None = None  # the listener (silent) or bound port (refuse)
        self._fillers: list[socket.socket] = []

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
            await super().start()

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

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if self.behaviour == "echo":
                writer.write(data)
                await writer.drain()

    async def stop(self) -> None:
        await super().stop()
        for filler in self._fillers:
            _rst_close(filler)
        self._fillers.clear()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
