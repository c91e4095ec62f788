"""TLS and HTTPS mock servers that misbehave on purpose, as censors and interceptors do.

Each connection starts as plain TCP: the server reads the raw ClientHello record first, takes
its SNI, and only then decides what to do, as a DPI box does. TLS itself runs over memory BIOs
fed from the stream, so the ClientHello already read is handed to the TLS engine unchanged.

TLSServer behaviours:
  ok                  complete the handshake (leaf for `name` and the listen address), then hold
  reset_after_hello   read the ClientHello, then RST
  silent_after_hello  read the ClientHello, then never answer
  close_after_hello   read the ClientHello, then FIN
  untrusted           a certificate for `name` from a second CA the client does not trust
  wrong_name          a valid certificate for another name (`wrong.invalid`)
  alert               answer the ClientHello with a fatal handshake_failure alert
Option `sni_behaviours={"blocked.example": "reset_after_hello"}` overrides the behaviour for
ClientHellos carrying that SNI: an SNI filter in front of a working server.

HTTPSServer adds, after a good handshake (ALPN http/1.1, or h2 too with option `http2=True`,
which serves small answers only; one request per connection):
  ok         `/` a small page, `/1mib` 1 MiB of data, anything else 404
  forbidden  403 with a short block page
  throttle   the body at `rate` bit/s on the wire (default 128 kbit/s), records of `chunk` bytes
  stall      the headers and `stall_bytes` of the body (default 16 KiB), then nothing
  redirect   302 to a captive-portal login page (`portal` option, default login.portal.invalid)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import tempfile
from pathlib import Path
from typing import Any

from probe.mock.certs import Leaf, TestCA
from probe.mock.server import MockServer, drain_until_closed

_ALERT_HANDSHAKE_FAILURE = bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28])  # fatal, 40
_MAX_HELLO = 1 << 16
_MIB = 1 << 20


def parse_sni(record: bytes) -> str | None:
    """The server_name in a raw ClientHello record (RFC 8446 4.1.2, RFC 6066 3); None if absent
    or unreadable."""
    try:
        if record[0] != 0x16 or record[5] != 0x01:
            return None
        pos = 5 + 4 + 2 + 32  # record header, handshake header, legacy_version, random
        pos += 1 + record[pos]  # legacy_session_id
        pos += 2 + int.from_bytes(record[pos:pos + 2], "big")  # cipher_suites
        pos += 1 + record[pos]  # legacy_compression_methods
        end = pos + 2 + int.from_bytes(record[pos:pos + 2], "big")
        pos += 2
        while pos + 4 <= end:
            kind, length = struct.unpack_from("!HH", record, pos)
            pos += 4
            if kind == 0:  # server_name: list length, name type (0 = host_name), length, name
                name_length = int.from_bytes(record[pos + 3:pos + 5], "big")
                return record[pos + 5:pos + 5 + name_length].decode("ascii").lower()
            pos += length
    except (IndexError, UnicodeDecodeError):
        return None
    return None


async def read_record(reader: asyncio.StreamReader) -> bytes:
    """One whole TLS record from the stream (header and body)."""
    header = await reader.readexactly(5)
    length = int.from_bytes(header[3:5], "big")
    if length > _MAX_HELLO:
        raise ValueError("record too long")
    return header + await reader.readexactly(length)


class ServerTLS:
    """Server-side TLS over memory BIOs on an asyncio stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 context: ssl.SSLContext, already_read: bytes) -> None:
        self.reader, self.writer = reader, writer
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._in.write(already_read)
        self.tls = context.wrap_bio(self._in, self._out, server_side=True)

    async def _flush(self) -> None:
        if data := self._out.read():
            self.writer.write(data)
            await self.writer.drain()

    async def _more(self) -> None:
        data = await self.reader.read(65536)
        if not data:
            raise EOFError("client closed")
        self._in.write(data)

    async def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                await self._more()
        await self._flush()

    async def recv(self, max_bytes: int = 65536) -> bytes:
        while True:
            try:
                return self.tls.read(max_bytes)
            except ssl.SSLWantReadError:
                await self._flush()
                await self._more()
            except ssl.SSLZeroReturnError:
                return b""

    async def read_request(self, limit: int = 65536) -> bytes | None:
        """An HTTP/1.1 request head, or None when the client closed or sent more than `limit`."""
        request = b""
        while b"\r\n\r\n" not in request:
            data = await self.recv()
            if not data or len(request) > limit:
                return None
            request += data
        return request

    def encrypt(self, data: bytes) -> bytes:
        """The TLS record(s) carrying `data`, to be written by the caller."""
        self.tls.write(data)
        return self._out.read()

    async def send(self, data: bytes) -> None:
        """One TLS record per call (up to 16 KiB): callers choose the record size."""
        self.tls.write(data)
        await self._flush()


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TLSServer(MockServer):
    """A TLS server on a real socket; see the module docstring for the behaviours."""

    BEHAVIOURS: tuple[str, ...] = (
        "ok", "reset_after_hello", "silent_after_hello", "close_after_hello", "untrusted",
        "wrong_name", "alert",
    )
    ALPN: tuple[str, ...] = ()
    _OPTIONS: frozenset[str] = frozenset({"sni_behaviours"})

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
        super().__init__(behaviour, host, port, name, options, self._OPTIONS)
        self.sni_behaviours: dict[str, str] = {
            sni: self._check(b) for sni, b in (options.get("sni_behaviours") or {}).items()}
        self.ca = ca or TestCA()
        self.options = options
        self._contexts: dict[str, ssl.SSLContext] = {}
        self.hellos: list[str | None] = []  # the SNI of every ClientHello, in order (for tests)

    @property
    def alpn(self) -> tuple[str, ...]:
        return self.ALPN

    def _context(self, kind: str) -> ssl.SSLContext:
        """The server context for `ok`, `untrusted` or `wrong_name`, built on first use."""
        context = self._contexts.get(kind)
        if context is None:
            if kind == "untrusted":
                leaf = TestCA("probe untrusted interceptor CA").issue(self.name, self.host)
            elif kind == "wrong_name":
                leaf = self.ca.issue("wrong.invalid")
            else:
                leaf = self.ca.issue(self.name, self.host)
            context = server_context(leaf, self.alpn)
            self._contexts[kind] = context
        return context

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = await read_record(reader)
        sni = parse_sni(hello)
        self.hellos.append(sni)
        behaviour = self.sni_behaviours.get(sni or "", self.behaviour)
        if behaviour == "reset_after_hello":
            _rst(writer)
        elif behaviour == "silent_after_hello":
            await drain_until_closed(reader)
        elif behaviour == "close_after_hello":
            writer.close()
        elif behaviour == "alert":
            writer.write(_ALERT_HANDSHAKE_FAILURE)
            await writer.drain()
        else:
            kind = behaviour if behaviour in ("untrusted", "wrong_name") else "ok"
            tls = ServerTLS(reader, writer, self._context(kind), hello)
            await tls.handshake()
            await self.serve(tls, behaviour)

    async def serve(self, tls: ServerTLS, behaviour: str) -> None:
        """After a good handshake: hold the connection until the client closes."""
        while await tls.recv():
            pass


def server_context(leaf: Leaf, alpn: tuple[str, ...]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # load_cert_chain reads files only: write the pair to a private temporary folder.
    with tempfile.TemporaryDirectory() as folder:
        cert, key = leaf.write(Path(folder), "leaf")
        context.load_cert_chain(cert, key)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


class HTTPSServer(TLSServer):
    """An HTTPS (HTTP/1.1) server; see the module docstring for the behaviours."""

    BEHAVIOURS = TLSServer.BEHAVIOURS + ("forbidden", "throttle", "stall", "redirect")
    ALPN = ("http/1.1",)
    _OPTIONS = TLSServer._OPTIONS | {"rate", "stall_bytes", "portal", "chunk", "http2"}

    BLOCK_PAGE = (b"<html><head><title>Access denied</title></head><body>"
                  b"<h1>Access to this resource is restricted</h1></body></html>")

    @property
    def rate(self) -> float:
        return float(self.options.get("rate", 128_000))

    @property
    def alpn(self) -> tuple[str, ...]:
        return ("h2", "http/1.1") if self.options.get("http2") else self.ALPN

    async def serve(self, tls: ServerTLS, behaviour: str) -> None:
        if tls.tls.selected_alpn_protocol() == "h2":
            await self._serve_h2(tls, behaviour)
            return
        request = await tls.read_request()
        if request is None:
            return
        path = request.split(b" ", 2)[1].decode("latin-1") if request.count(b" ") >= 2 else "/"
        if behaviour == "forbidden":
            await self._respond(tls, 403, self.BLOCK_PAGE, "text/html")
        elif behaviour == "redirect":
            portal = self.options.get("portal", "login.portal.invalid")
            await self._respond(tls, 302, b"", "text/html",
                                location=f"http://{portal}/login?continue=https://{self.name}/")
        elif path == "/":
            await self._respond(tls, 200, b"<html><body>mock " + self.name.encode() + b"</body>"
                                b"</html>", "text/html", behaviour)
        elif path == "/1mib":
            await self._respond(tls, 200, bytes(_MIB), "application/octet-stream", behaviour)
        else:
            await self._respond(tls, 404, b"not found", "text/plain")
        if behaviour == "stall":
            await drain_until_closed(tls.reader)  # the rest never comes

    async def _respond(self, tls: ServerTLS, status: int, body: bytes, content_type: str,
                       behaviour: str = "ok", location: str | None = None) -> None:
        reason = {200: "OK", 302: "Found", 403: "Forbidden", 404: "Not Found"}[status]
        head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n")
        if location:
            head += f"location: {location}\r\n"
        await tls.send(head.encode() + b"\r\n")
        if behaviour == "throttle":
            await self._send_slowly(tls, body)
        elif behaviour == "stall":
            stall_bytes = int(self.options.get("stall_bytes", 16 * 1024))
            for i in range(0, min(stall_bytes, len(body)), 4096):
                await tls.send(body[i:min(i + 4096, stall_bytes)])
        else:
            for i in range(0, len(body), 16384):
                await tls.send(body[i:i + 16384])

    async def _serve_h2(self, tls: ServerTLS, behaviour: str) -> None:
        """HTTP/2 (option http2=True): small answers only: `/`, the block page, the redirect."""
        import h2.config
        import h2.connection
        import h2.events

        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        await tls.send(conn.data_to_send())
        while data := await tls.recv():
            for event in conn.receive_data(data):
                if not isinstance(event, h2.events.RequestReceived):
                    continue
                headers = {k.decode() if isinstance(k, bytes) else k:
                           v.decode() if isinstance(v, bytes) else v
                           for k, v in event.headers or []}
                status, body = 404, b"not found"
                if behaviour == "forbidden":
                    status, body = 403, self.BLOCK_PAGE
                elif headers.get(":path") == "/":
                    status, body = 200, b"<html><body>mock over h2</body></html>"
                conn.send_headers(event.stream_id, [(":status", str(status)),
                                                    ("content-length", str(len(body)))])
                conn.send_data(event.stream_id, body, end_stream=True)
            await tls.send(conn.data_to_send())

    async def _send_slowly(self, tls: ServerTLS, body: bytes) -> None:
        """At `rate` bit/s on the wire, as a shaper dropping packets delivers them: the bytes of
        each TLS record (`chunk` bytes of body, default 1 KiB) trickle in 1 KiB pieces."""
        chunk = int(self.options.get("chunk", 1024))
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent = 0
        for i in range(0, len(body), chunk):
            record = tls.encrypt(body[i:i + chunk])
            for j in range(0, len(record), 1024):
                piece = record[j:j + 1024]
                tls.writer.write(piece)
                await tls.writer.drain()
                sent += len(piece)
                # pace against the start, so sleep granularity does not add up
                await asyncio.sleep(max(0.0, started + sent * 8 / self.rate - loop.time()))
