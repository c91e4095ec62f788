"""Hostile peers: servers that try to hang, flood or exhaust the probe, and ones that echo the
client's address back (for the privacy tests).

A censor's middlebox or a broken server may answer with anything; the probe must turn each of
these into a failure fact within its timeout, with bounded memory, never a traceback.

HostileServer behaviours (TLS over TCP, certificate from a TestCA for `name` and the address):
  endless_body   HTTP 200 without a length, then a body that never ends (as fast as the client reads)
  slowloris      a genuine ServerHello... flight, trickled one byte every `interval` seconds
                 (default 1.0): each byte resets an idle timer, only a deadline ends it
  slow_headers   a good handshake, then the response headers one byte every `interval` seconds
  huge_chain     the leaf followed by `chain` (default 120) junk certificates of `padding` bytes
                 each (default 8 KiB): a Certificate message of about 1 MB
  header_bomb    HTTP 200 with `headers` (default 10,000) header lines
  header_line    HTTP 200 with one header line of `line_bytes` (default 1 MiB)
  echo_address   HTTP 200 naming the client's address and port in a header and in the body
  echo_redirect  HTTP 302 to a portal whose URL carries the client's address, body naming it too
One request per connection; `clients` lists every client (address, port) seen, for tests.

HostileDnsServer behaviours (UDP and TCP on one port):
  pointer_loop   a reply whose answer name is a compression pointer to itself (RFC 1035 4.1.4)
  pointer_cycle  two compression pointers pointing at each other
  truncate_loop  over UDP a valid empty reply with TC set; over TCP the pointer loop
  junk           random bytes carrying the query's id
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import struct
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from probe.mock.certs import Leaf, TestCA
from probe.mock.server import MockServer, drain_until_closed
from probe.mock.tls import ServerTLS, read_record, server_context

_PADDING_OID = ObjectIdentifier("1.3.6.1.4.1.55555.1")  # a private arc: nobody understands it
_BODY_CHUNK = 16384  # one TLS record of zeros


def junk_chain(count: int, padding: int) -> bytes:
    """`count` self-signed certificates, each carrying `padding` bytes in an unknown extension,
    as PEM: nothing a verifier can use, everything a parser must read."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    pems = []
    for i in range(count):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"junk {i}")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(i + 1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.UnrecognizedExtension(_PADDING_OID, bytes(padding)),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        pems.append(cert.public_bytes(serialization.Encoding.PEM))
    return b"".join(pems)


class HostileServer(MockServer):
    """A TLS/HTTPS server that attacks its clients; see the module docstring."""

    BEHAVIOURS: tuple[str, ...] = (
        "endless_body", "slowloris", "slow_headers", "huge_chain", "header_bomb", "header_line",
        "echo_address", "echo_redirect",
    )
    _OPTIONS = frozenset({"interval", "chain", "padding", "headers", "line_bytes", "portal"})

    def __init__(self, behaviour: str = "endless_body", *, host: str = "127.0.0.1", port: int = 0,
                 ca: TestCA | None = None, name: str = "mock.test", **options: Any) -> None:
        super().__init__(behaviour, host, port, name, options, self._OPTIONS)
        self.ca = ca or TestCA()
        self.interval = float(options.get("interval", 1.0))
        self.chain = int(options.get("chain", 120))
        self.padding = int(options.get("padding", 8192))
        self.headers = int(options.get("headers", 10_000))
        self.line_bytes = int(options.get("line_bytes", 1 << 20))
        self.portal = str(options.get("portal", "login.portal.invalid"))
        self.clients: list[tuple[str, int]] = []
        self.bytes_sent = 0  # body bytes of endless_body, all connections
        self._leaf: Leaf | None = None
        self._contexts: dict[str, Any] = {}

    def _context(self, kind: str) -> Any:
        context = self._contexts.get(kind)
        if context is None:
            assert self._leaf is not None
            leaf = self._leaf
            if kind == "huge_chain":
                leaf = Leaf(leaf.cert_pem + junk_chain(self.chain, self.padding), leaf.key_pem)
            context = self._contexts[kind] = server_context(leaf, ("http/1.1",))
        return context

    async def start(self) -> None:
        self._leaf = self.ca.issue(self.name, self.host)
        self._context("ok")
        if self.behaviour == "huge_chain":  # built up front: it takes a moment
            self._context("huge_chain")
        await super().start()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        self.clients.append((peer[0], peer[1]))
        behaviour = self.behaviour
        hello = await read_record(reader)
        kind = "huge_chain" if behaviour == "huge_chain" else "ok"
        tls = ServerTLS(reader, writer, self._context(kind), hello)
        if behaviour == "slowloris":
            await self._trickle_handshake(tls)
            return
        await tls.handshake()
        if await tls.read_request() is None:
            return
        await self._respond(tls, behaviour, peer)  # then close: "connection: close"

    async def _trickle_handshake(self, tls: ServerTLS) -> None:
        """The server's first flight, produced by a real TLS engine, a byte at a time."""
        with contextlib.suppress(Exception):
            tls.tls.do_handshake()  # consumes the ClientHello; wants the client's Finished next
        flight = tls._out.read()
        for i in range(len(flight)):
            tls.writer.write(flight[i:i + 1])
            await tls.writer.drain()
            await asyncio.sleep(self.interval)
        await drain_until_closed(tls.reader)

    async def _respond(self, tls: ServerTLS, behaviour: str, peer: tuple[Any, ...]) -> None:
        you = f"{peer[0]}:{peer[1]}"
        if behaviour == "endless_body":
            await tls.send(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                           b"connection: close\r\n\r\n")
            zeros = bytes(_BODY_CHUNK)
            while True:  # ends when the client resets the connection (drain raises)
                await tls.send(zeros)
                self.bytes_sent += len(zeros)
        elif behaviour == "slow_headers":
            head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-slow: " + b"a" * 4096 + b"\r\n\r\nok"
            for i in range(len(head)):
                await tls.send(head[i:i + 1])
                await asyncio.sleep(self.interval)
        elif behaviour == "header_bomb":
            lines = b"".join(b"x-bomb-%06d: %s\r\n" % (i, b"b" * 16) for i in range(self.headers))
            await _send_all(tls, b"HTTP/1.1 200 OK\r\n" + lines + b"content-length: 2\r\n\r\nok")
        elif behaviour == "header_line":
            await _send_all(tls, b"HTTP/1.1 200 OK\r\nx-bomb: " + b"b" * self.line_bytes
                            + b"\r\ncontent-length: 2\r\n\r\nok")
        elif behaviour == "echo_address":
            body = f"<html><body>your address is {you} ({peer[0]})</body></html>".encode()
            await tls.send(f"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\nx-client-ip: {peer[0]}"
                           f"\r\nx-forwarded-for: {you}\r\ncontent-length: {len(body)}\r\n"
                           f"connection: close\r\n\r\n".encode() + body)
        elif behaviour == "echo_redirect":
            body = f"you ({peer[0]}) must log in".encode()
            await tls.send(f"HTTP/1.1 302 Found\r\nlocation: http://{self.portal}/login?ip="
                           f"{peer[0]}&port={peer[1]}\r\ncontent-length: {len(body)}\r\n"
                           f"connection: close\r\n\r\n".encode() + body)
        else:  # huge_chain: the handshake was the attack; answer plainly if it got through
            await tls.send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")


async def _send_all(tls: ServerTLS, data: bytes) -> None:
    for i in range(0, len(data), _BODY_CHUNK):
        await tls.send(data[i:i + _BODY_CHUNK])


# --- DNS -------------------------------------------------------------------------------------

_HEADER = struct.Struct("!HHHHHH")  # id, flags, qd, an, ns, ar (RFC 1035 4.1.1)
_QR_RD_RA = 0x8180
_TC = 0x0200


def _question(query: bytes) -> bytes | None:
    """The question section of a query (name, type, class), or None when there is none."""
    pos = _HEADER.size
    while pos < len(query):
        length = query[pos]
        if length == 0:
            return query[_HEADER.size:pos + 1 + 4] if pos + 5 <= len(query) else None
        if length & 0xC0:
            return None  # queries carry no pointers
        pos += 1 + length
    return None


def loop_reply(query: bytes, *, cycle: bool = False, truncated: bool = False) -> bytes | None:
    """A reply to `query` whose answer name never ends: a compression pointer to itself, or
    (cycle) two pointers to each other. With `truncated`, a valid empty reply with TC set."""
    question = _question(query)
    if question is None:
        return None
    (qid,) = struct.unpack_from("!H", query)
    if truncated:
        return _HEADER.pack(qid, _QR_RD_RA | _TC, 1, 0, 0, 0) + question
    start = _HEADER.size + len(question)  # where the answer's name begins
    if cycle:
        name = struct.pack("!HH", 0xC000 | (start + 2), 0xC000 | start)
    else:
        name = struct.pack("!H", 0xC000 | start)
    answer = name + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([127, 0, 0, 9])
    return _HEADER.pack(qid, _QR_RD_RA, 1, 1, 0, 0) + question + answer


class HostileDnsServer(MockServer):
    """A DNS server (UDP and TCP on one port) whose replies attack the parser."""

    BEHAVIOURS: tuple[str, ...] = ("pointer_loop", "pointer_cycle", "truncate_loop", "junk")
    serves_udp = True

    def __init__(self, behaviour: str = "pointer_loop", *, host: str = "127.0.0.1", port: int = 0,
                 ca: TestCA | None = None, name: str = "dns.mock.test", **options: Any) -> None:
        super().__init__(behaviour, host, port, name, options)
        self.queries = 0

    def reply(self, query: bytes, *, over_tcp: bool) -> bytes | None:
        self.queries += 1
        behaviour = self.behaviour
        if behaviour == "junk":
            return query[:2] + os.urandom(200)
        return loop_reply(query, cycle=behaviour == "pointer_cycle",
                          truncated=behaviour == "truncate_loop" and not over_tcp)

    def datagram(self, data: bytes, addr: Any) -> None:
        answer = self.reply(data, over_tcp=False)
        if answer is not None:
            self._sendto(answer, addr)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # until EOF, RST or garbage ends it
            size = int.from_bytes(await reader.readexactly(2), "big")
            answer = self.reply(await reader.readexactly(size), over_tcp=True)
            if answer is not None:
                writer.write(len(answer).to_bytes(2, "big") + answer)
                await writer.drain()


# --- running mock servers beside a blocking caller -------------------------------------------


class Background:
    """Mock servers on an event loop of their own, in a daemon thread: for tests that drive the
    probe as a subprocess (`python -m probe run`) and for scripts without an event loop.

        with Background(TCPServer("ok"), HostileServer("slowloris")) as (tcp, slow):
            subprocess.run([..., f"tcp://127.0.0.1:{tcp.port}", ...])
    """

    def __init__(self, *servers: Any) -> None:
        import threading

        self.servers = servers
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="mock-servers",
                                        daemon=True)

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        """Run a coroutine on the servers' loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> tuple[Any, ...]:
        self._thread.start()
        try:
            for server in self.servers:
                self.call(server.start())
        except BaseException:
            self.__exit__()
            raise
        return self.servers

    def __exit__(self, *exc: object) -> None:
        for server in reversed(self.servers):
            with contextlib.suppress(Exception):
                self.call(server.stop(), timeout=10.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10.0)
        if not self._thread.is_alive():
            self.loop.close()
