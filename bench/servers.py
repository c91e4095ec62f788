"""Loopback servers for the benchmark, each in a process of its own.

A server in its own process keeps its CPU out of the client's figures (process_time is the
client's alone) and lets it run on the other core. tcp, tls and https are plain asyncio servers
(the C-backed ssl transport is faster than the mocks' memory-BIO TLS, so the client is the
bottleneck); stun, quic, silent and throttle (an HTTPS server sending its bodies at 128 kbit/s)
are probe's own mocks.
"""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing
import ssl
import tempfile
import time
from pathlib import Path
from queue import Empty
from typing import Any, Self

NAME = "bench.test"  # the certificate name; clients connect to 127.0.0.1 with this SNI
KINDS = ("tcp", "tls", "https", "stun", "quic", "silent", "throttle")
_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def _serve(kind: str, folder: str, ready: Any) -> None:
    try:  # the server side is not what is measured: let it go as fast as it can
        importlib.import_module("uvloop").install()
    except ImportError:
        pass
    asyncio.run(_serve_async(kind, Path(folder), ready))


def _server_context(folder: Path, alpn: list[str]) -> ssl.SSLContext:
    from probe.mock.certs import TestCA

    ca = TestCA()
    ca.write_ca(folder / "ca.pem")
    cert, key = ca.issue(NAME, "127.0.0.1").write(folder, "leaf")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


async def _until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.read(1)
    except OSError:  # the probe ends with RST
        pass
    writer.close()


async def _http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(_RESPONSE)
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    writer.close()


async def _serve_async(kind: str, folder: Path, ready: Any) -> None:
    keep: Any
    if kind == "tcp":
        keep = await asyncio.start_server(_until_closed, "127.0.0.1", 0, backlog=4096)
        port = keep.sockets[0].getsockname()[1]
    elif kind in ("tls", "https"):
        context = _server_context(folder, ["http/1.1"] if kind == "https" else [])
        handler = _http if kind == "https" else _until_closed
        keep = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=context, backlog=4096)
        port = keep.sockets[0].getsockname()[1]
    elif kind == "stun":
        from probe.mock.stun import StunServer

        keep = StunServer("ok", tcp=False)
        await keep.start()
        port = keep.port
    elif kind == "quic":
        from probe.mock.certs import TestCA
        from probe.mock.quic import QuicServer

        ca = TestCA()
        ca.write_ca(folder / "ca.pem")
        keep = QuicServer("ok", ca=ca, name=NAME)
        await keep.start()
        port = keep.port
    elif kind == "throttle":
        from probe.mock.certs import TestCA
        from probe.mock.tls import HTTPSServer

        ca = TestCA()
        ca.write_ca(folder / "ca.pem")
        keep = HTTPSServer("throttle", ca=ca, name=NAME)  # 128 kbit/s, the lab's throttle
        await keep.start()
        port = keep.port
    elif kind == "silent":
        from probe.mock.tcp import TCPServer

        keep = TCPServer("silent")
        await keep.start()
        port = keep.port
    else:
        raise ValueError(f"unknown server kind {kind!r}")
    ready.put(port)
    await asyncio.Event().wait()


class Server:
    """A server of one kind in a child process; `port` and, for TLS kinds, `ca_file`."""

    def __init__(self, kind: str) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="probe-bench-")
        spawn = multiprocessing.get_context("spawn")  # no inherited loop or sockets
        queue = spawn.Queue()
        self._process = spawn.Process(target=_serve, args=(kind, self._folder.name, queue),
                                      daemon=True)
        self._process.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                self.port: int = queue.get(timeout=0.1)
                break
            except Empty:
                if not self._process.is_alive() or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"the {kind} server did not start") from None
        self.ca_file = str(Path(self._folder.name) / "ca.pem")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._process.kill()
        self._process.join()
        self._folder.cleanup()
