"""The reflector's TCP side: TLS with any SNI, then the echo frames of probe/wire/echo.py.

A connection goes: limits (total and per-source connections, the source's packet rate) ->
TLS handshake (any SNI, any ALPN or none) -> HELLO with a valid tag, else dropped without a word
-> frames until the client closes, goes idle, or a limit ends it:

    ECHO      answered at once by an ECHO_REPLY of the same size, carrying the counters
    DATA      counted only: an upload, in chunks of the client's choosing
    REPORT    answered by the counters (the request carries room for them)
    DOWNLOAD  `total` bytes sent down in `chunk`-byte frames, one write each (one TLS record
              when a chunk is below 16 KiB), then DOWNLOAD_DONE with the counters; or at once
              DOWNLOAD_DONE "refused" when a limit forbids it, so the probe never mistakes our
              refusal for a network freeze.

Counters are frames and frame bytes in each direction for this connection, so a freeze after
N bytes or N records shows on the side that stopped receiving.

Why DOWNLOAD is not an amplifier although its answer is larger than its request: over TCP the
answer can only go to an address that completed a handshake, so nobody can aim it at a third
party; what is left is a client spending our bandwidth on itself, which is capped: 1 MiB per
request, 8 MiB per connection, the source's byte rate and hourly volume (shared with UDP), 8
connections per source and 256 in all, 10 minutes each. Optimistic ACKs can make us send
faster, never more. The ECHO and REPORT answers are no larger than their requests anyway.
A client that stops reading is dropped once our writes wait `write_timeout`; memory per
connection is bounded by one frame (64 KiB) and the transport's write buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Callable, Sequence

from probe.reflect.limits import Sources, Stats
from probe.wire import echo
from probe.wire.echo import Counters, DownloadStatus, FrameType

log = logging.getLogger("probe.reflect")

_FILLER = os.urandom(echo.MAX_FRAME_PAYLOAD)  # what downloads carry: incompressible, made once


class _End(Exception):
    """Ends a connection quietly; the stats already say why."""


class TcpSide:
    """Every TLS connection of the reflector, on any of its TCP ports."""

    def __init__(self, keys: Sequence[bytes], sources: Sources, stats: Stats,
                 tls: ssl.SSLContext, clock: Callable[[], float]) -> None:
        self.keys = tuple(keys)
        self.sources = sources
        self.limits = sources.limits
        self.stats = stats
        self.tls = tls
        self.clock = clock
        self.open = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def connection(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        """The `asyncio.start_server` callback: never raises, always closes."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        source = None
        try:
            source = self._admit(writer)
            if source is None:
                return
            async with asyncio.timeout(self.limits.connection_lifetime):
                await self._serve(reader, writer, source)
        except (TimeoutError, _End) as exc:
            if isinstance(exc, TimeoutError):
                self.stats.tcp_timeouts += 1
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass  # the client went away
        except asyncio.CancelledError:
            pass  # stop(): the server is closing
        except Exception as exc:  # noqa: BLE001 - a hostile client must not take the server down
            self.stats.errors += 1
            log.debug("reflect: a connection raised %s", type(exc).__name__)  # no address
        finally:
            if source is not None:
                self.open -= 1
                left = self.sources.connections.get(source, 1) - 1
                if left:
                    self.sources.connections[source] = left
                else:
                    self.sources.connections.pop(source, None)
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            writer.transport.abort()

    def _admit(self, writer: asyncio.StreamWriter) -> bytes | None:
        peer = writer.get_extra_info("peername")
        if peer is None:
            return None
        source = self.sources.key(peer)
        limits = self.limits
        if (self.open >= limits.max_connections
                or self.sources.connections.get(source, 0) >= limits.source_connections
                or not self.sources.admit(source, self.clock())):
            self.stats.connections_refused += 1
            return None
        self.open += 1
        self.sources.connections[source] = self.sources.connections.get(source, 0) + 1
        self.stats.connections += 1
        return source

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     source: bytes) -> None:
        limits, stats = self.limits, self.stats
        try:
            await writer.start_tls(self.tls, ssl_handshake_timeout=limits.handshake_timeout)
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError):
            stats.tls_failed += 1
            raise _End from None
        frames = echo.FrameReader()
        counters = Counters()
        downloaded = 0
        authenticated = False

        async def send(data: bytes) -> None:
            nonlocal counters
            writer.write(data)
            await asyncio.wait_for(writer.drain(), limits.write_timeout)
            counters = Counters(counters.received_bytes, counters.received_frames,
                                counters.sent_bytes + len(data), counters.sent_frames + 1)
            stats.tcp_sent_bytes += len(data)

        while True:
            data = await asyncio.wait_for(reader.read(65536), limits.idle_timeout)
            if not data:
                return
            stats.tcp_received_bytes += len(data)
            try:
                batch = frames.feed(data)
            except echo.EchoCodecError:
                stats.tcp_protocol_errors += 1
                raise _End from None
            for frame in batch:
                size = echo.FRAME_HEADER + len(frame.payload)
                counters = Counters(counters.received_bytes + size, counters.received_frames + 1,
                                    counters.sent_bytes, counters.sent_frames)
                if counters.received_bytes > limits.connection_upload:
                    stats.tcp_protocol_errors += 1
                    raise _End
                if not authenticated:
                    self._authenticate(frame)
                    authenticated = True
                    await send(echo.encode_frame(FrameType.HELLO_OK))
                    continue
                try:
                    if frame.type is FrameType.ECHO:
                        await send(echo.echo_reply(frame.payload, counters))
                    elif frame.type is FrameType.DATA:
                        pass  # counted above
                    elif frame.type is FrameType.REPORT and len(frame.payload) >= 16:
                        await send(echo.report_reply(counters))
                    elif frame.type is FrameType.DOWNLOAD:
                        total, chunk = echo.parse_download(frame.payload)
                        if self._may_download(total, chunk, downloaded, source):
                            stats.downloads += 1
                            downloaded += total
                            for offset in range(0, total, chunk):
                                piece = _FILLER[: min(chunk, total - offset)]
                                await send(echo.encode_frame(FrameType.DOWNLOAD_DATA, piece))
                            await send(echo.download_done(DownloadStatus.SENT, counters))
                        else:
                            stats.downloads_refused += 1
                            await send(echo.download_done(DownloadStatus.REFUSED, counters))
                    else:
                        raise echo.EchoCodecError(f"a client does not send {frame.type.name}")
                except echo.EchoCodecError:
                    stats.tcp_protocol_errors += 1
                    raise _End from None

    def _authenticate(self, frame: echo.Frame) -> None:
        if frame.type is FrameType.HELLO:
            with contextlib.suppress(echo.EchoCodecError):
                echo.parse_hello(frame.payload, self.keys)
                return
        self.stats.tcp_unauthenticated += 1
        raise _End

    def _may_download(self, total: int, chunk: int, downloaded: int, source: bytes) -> bool:
        limits = self.limits
        frames = -(-total // chunk)
        if (total > limits.max_download or frames > limits.max_download_frames
                or downloaded + total > limits.connection_download):
            return False
        # The payload is charged; frame headers are bounded by max_download_frames.
        return self.sources.spend(source, total, self.clock())

    async def close(self) -> None:
        """End every connection (stop()): aborting ends each handler's read or write."""
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
