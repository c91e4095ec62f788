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
  warning_alert  every ClientHello, whatever its SNI, answered with a TLS alert of level warning
                 (`alert`, default 112 unrecognized_name), then FIN: OpenSSL reads that as EOF
Floods: valid protocol, sent as fast as the client reads (the socket never empties), until the
client goes away; whatever the client sends back (acks) is read and dropped:
  interim_flood        HTTP/1.1 `100 Continue` interim responses, endlessly
  chunk_extensions     HTTP/1.1 200, chunked: 1-byte chunks each with an `extension`-byte
                       chunk extension (default 90,000)
  settings_flood       HTTP/2 (ALPN h2): SETTINGS frames of `entries` settings (default 2,730,
                       a 16 KiB frame) before any response
  window_update_flood  HTTP/2: WINDOW_UPDATE frames (increment 1) before any response
  ping_flood           HTTP/2: a 200 response, then its body a byte at a time, each byte
                       followed by `pings` PING frames (default 1,000)
  empty_data_flood     HTTP/2: a 200 response, then empty DATA frames on its stream
  unknown_frame_flood  HTTP/2: frames of an unknown type (0xFA, which must be ignored)
One request per connection; `clients` lists every client (address, port) seen, `floods` how
many connections a flood began on and `bytes_sent` the flood's bytes, for tests.

TicketFloodServer: a TLS 1.3 server (blocking sockets, a thread a connection) whose handshake
ends in an endless train of NewSessionTicket messages: valid TLS records that carry no
application data, as fast as the client reads them.

HostileDnsServer behaviours (UDP and TCP on one port):
  pointer_loop   a reply whose answer name is a compression pointer to itself (RFC 1035 4.1.4)
  pointer_cycle  two compression pointers pointing at each other
  truncate_loop  over UDP a valid empty reply with TC set; over TCP the pointer loop
  junk           random bytes carrying the query's id

HostileTurnServer behaviours (UDP and TCP on one port):
  long_realm     every request answered with 401 Unauthorized, a NONCE and a REALM of
                 `realm_bytes` bytes (default 1,000): more than RFC 8489's 763

UdpFloodServer behaviours: from a client's first datagram on, a valid answer to it sent again
and again as fast as the socket allows, for `seconds` (default 30; to the latest client only):
  dns    the reply to the query (an A or AAAA record of `address`, default 127.0.0.9)
  stun   the Binding success response to the request
  quic   the Initial packet (ServerHello) of a real server's first flight, without the
         Handshake packets that would let the handshake finish
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import socket
import ssl
import struct
import threading
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


H1_FLOODS = ("interim_flood", "chunk_extensions")
H2_FLOODS = ("settings_flood", "window_update_flood", "ping_flood", "empty_data_flood",
             "unknown_frame_flood")

# HTTP/2 frame types (RFC 9113 6) and the one setting the SETTINGS flood repeats
_DATA, _HEADERS, _SETTINGS, _PING, _WINDOW_UPDATE, _UNKNOWN = 0x0, 0x1, 0x4, 0x6, 0x8, 0xFA
_HEADER_TABLE_SIZE = 0x1


def h2_frame(kind: int, stream: int, payload: bytes = b"", flags: int = 0) -> bytes:
    """One HTTP/2 frame: 24-bit length, type, flags, 31-bit stream id, payload (RFC 9113 4.1)."""
    return (len(payload).to_bytes(3, "big") + bytes([kind, flags])
            + (stream & 0x7FFFFFFF).to_bytes(4, "big") + payload)


def _repeat(unit: bytes, size: int = _BODY_CHUNK) -> bytes:
    """`unit` repeated to fill about `size` bytes (at least once): one write of a flood."""
    return unit * max(1, size // len(unit))


class HostileServer(MockServer):
    """A TLS/HTTPS server that attacks its clients; see the module docstring."""

    BEHAVIOURS: tuple[str, ...] = (
        "endless_body", "slowloris", "slow_headers", "huge_chain", "header_bomb", "header_line",
        "echo_address", "echo_redirect", "warning_alert", *H1_FLOODS, *H2_FLOODS,
    )
    _OPTIONS = frozenset({"interval", "chain", "padding", "headers", "line_bytes", "portal",
                          "extension", "entries", "pings", "alert"})

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
        self.extension = int(options.get("extension", 90_000))
        self.entries = int(options.get("entries", 2730))  # 2,730 x 6 bytes: one 16 KiB frame
        self.pings = int(options.get("pings", 1000))
        self.alert = int(options.get("alert", 112))
        self.clients: list[tuple[str, int]] = []
        self.bytes_sent = 0  # body bytes of endless_body, flood bytes of a flood; all connections
        self.floods = 0  # connections a flood began on
        self._leaf: Leaf | None = None
        self._contexts: dict[str, Any] = {}

    def _context(self, kind: str) -> Any:
        context = self._contexts.get(kind)
        if context is None:
            assert self._leaf is not None
            leaf = self._leaf
            if kind == "huge_chain":
                leaf = Leaf(leaf.cert_pem + junk_chain(self.chain, self.padding), leaf.key_pem)
            alpn = ("h2",) if kind == "h2" else ("http/1.1",)
            context = self._contexts[kind] = server_context(leaf, alpn)
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
        if behaviour == "warning_alert":  # record: alert, TLS 1.2, length 2; level 1 (warning)
            writer.write(bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x01, self.alert]))
            await writer.drain()
            return  # the connection closes with FIN
        kind = {"huge_chain": "huge_chain", **dict.fromkeys(H2_FLOODS, "h2")}.get(behaviour, "ok")
        tls = ServerTLS(reader, writer, self._context(kind), hello)
        if behaviour == "slowloris":
            await self._trickle_handshake(tls)
            return
        await tls.handshake()
        if behaviour in H2_FLOODS:
            await self._flood_h2(tls, behaviour)
            return
        if await tls.read_request() is None:
            return
        if behaviour in H1_FLOODS:
            await self._flood_h1(tls, behaviour)
            return
        await self._respond(tls, behaviour, peer)  # then close: "connection: close"

    async def _flood(self, tls: ServerTLS, block: bytes) -> None:
        """Send `block` again and again until the client goes away; read and drop what it sends
        meanwhile (PING and SETTINGS acks), so it never waits on its own writes."""
        self.floods += 1
        reading = asyncio.ensure_future(drain_until_closed(tls.reader))
        try:
            while not reading.done():  # done: the client closed or reset
                await _send_all(tls, block)
                self.bytes_sent += len(block)
        finally:
            reading.cancel()
            with contextlib.suppress(BaseException):
                await reading

    async def _flood_h1(self, tls: ServerTLS, behaviour: str) -> None:
        if behaviour == "interim_flood":
            await self._flood(tls, _repeat(b"HTTP/1.1 100 Continue\r\n\r\n"))
            return
        await tls.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n"
                       b"connection: close\r\n\r\n")
        await self._flood(tls, _repeat(b"1;" + b"x" * self.extension + b"\r\nA\r\n"))

    async def _flood_h2(self, tls: ServerTLS, behaviour: str) -> None:
        """Read the request with h2's server side, then flood with frames h2 never sees."""
        import h2.config
        import h2.connection
        import h2.events

        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        await tls.send(conn.data_to_send())
        stream: int | None = None
        while stream is None:
            data = await tls.recv()
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    stream = event.stream_id
        if behaviour in ("ping_flood", "empty_data_flood"):
            conn.send_headers(stream, [(":status", "200"),
                                       ("content-type", "application/octet-stream")])
        await tls.send(conn.data_to_send())  # the SETTINGS ack, and the response's HEADERS
        if behaviour == "settings_flood":
            block = h2_frame(_SETTINGS, 0, struct.pack("!HI", _HEADER_TABLE_SIZE, 4096)
                             * self.entries)
        elif behaviour == "window_update_flood":
            block = _repeat(h2_frame(_WINDOW_UPDATE, 0, struct.pack("!I", 1)))
        elif behaviour == "ping_flood":  # a body byte, then PINGs, again and again
            block = h2_frame(_DATA, stream, b"x") + h2_frame(_PING, 0, bytes(8)) * self.pings
        elif behaviour == "empty_data_flood":
            block = _repeat(h2_frame(_DATA, stream))
        else:  # unknown_frame_flood: RFC 9113 5.5, a receiver must ignore unknown types
            block = _repeat(h2_frame(_UNKNOWN, 0, bytes(8)))
        await self._flood(tls, block)

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


class TicketFloodServer:
    """A TLS 1.3 server whose handshake never ends: after its Finished, NewSessionTicket
    messages without end (OpenSSL sends `num_tickets` of them, here 2**31), as fast as the
    client reads. Blocking sockets, a thread a connection: OpenSSL writes the tickets itself,
    and only a blocking socket makes it wait for the client (a memory BIO would take them all).
    Runs beside `Background` like a MockServer (start, stop, port, behaviour)."""

    BEHAVIOURS: tuple[str, ...] = ("ticket_flood",)
    TICKETS = 2**31

    def __init__(self, behaviour: str = "ticket_flood", *, host: str = "127.0.0.1", port: int = 0,
                 ca: TestCA | None = None, name: str = "mock.test") -> None:
        if behaviour not in self.BEHAVIOURS:
            raise ValueError(f"unknown TicketFloodServer behaviour {behaviour!r}")
        self.behaviour, self.host, self.port, self.name = behaviour, host, port, name
        self.ca = ca or TestCA()
        self.clients: list[tuple[str, int]] = []
        self.floods = 0  # handshakes that reached the tickets (or at least began)
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    async def start(self) -> None:
        context = server_context(self.ca.issue(self.name, self.host), ("http/1.1",))
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.num_tickets = self.TICKETS
        listener = socket.create_server((self.host, self.port))
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._spawn(self._accept, listener, context)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name="ticket-flood", daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket, context: ssl.SSLContext) -> None:
        while True:
            try:
                conn, peer = listener.accept()
            except OSError:  # stop() shut the listener down
                return
            with self._lock:
                self.clients.append((peer[0], peer[1]))
                self._connections.add(conn)
            self._spawn(self._serve, conn, context)

    def _serve(self, conn: socket.socket, context: ssl.SSLContext) -> None:
        self.floods += 1
        try:
            with context.wrap_socket(conn, server_side=True):
                pass  # the handshake returns only when the tickets run out: never, in practice
        except OSError:  # the client reset or closed: the flood is over
            pass
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.close()

    async def stop(self) -> None:
        with self._lock:
            sockets = [s for s in (self._listener, *self._connections) if s is not None]
            threads = list(self._threads)
        for sock in sockets:  # wakes a blocked accept() or send() in its thread
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        await asyncio.to_thread(_join, threads)
        if self._listener is not None:
            self._listener.close()
            self._listener = None


def _join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(5.0)


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


# --- TURN --------------------------------------------------------------------------------------


def long_realm_401(request: bytes, realm_bytes: int) -> bytes | None:
    """A 401 answer to a STUN request with a NONCE and a REALM of `realm_bytes` bytes: the
    codec's encoding of the rest, the REALM added after it by hand (the codec refuses to encode
    what RFC 8489 forbids); None when `request` is no STUN request."""
    from probe.wire import stun

    try:
        message = stun.decode_message(request)
    except stun.StunCodecError:
        return None
    if message.cls != stun.Class.REQUEST:
        return None
    head = stun.encode_message(stun.error_response(message, 401, "Unauthorized",
                                                   nonce="nonce-of-the-mock", fingerprint=False))
    realm = b"r" * realm_bytes
    realm = struct.pack("!HH", 0x0014, len(realm)) + realm + bytes(-len(realm) % 4)
    length = len(head) - stun.HEADER_SIZE + len(realm)
    return head[:2] + struct.pack("!H", length) + head[4:] + realm


class HostileTurnServer(MockServer):
    """A TURN-looking server (UDP and TCP on one port) whose answers break STUN's limits."""

    BEHAVIOURS: tuple[str, ...] = ("long_realm",)
    serves_udp = True

    def __init__(self, behaviour: str = "long_realm", *, host: str = "127.0.0.1", port: int = 0,
                 ca: TestCA | None = None, name: str = "turn.mock.test", **options: Any) -> None:
        super().__init__(behaviour, host, port, name, options, ("realm_bytes",))
        self.realm_bytes = int(options.get("realm_bytes", 1000))
        self.requests = 0

    def answer(self, data: bytes) -> bytes | None:
        answer = long_realm_401(data, self.realm_bytes)
        self.requests += answer is not None
        return answer

    def datagram(self, data: bytes, addr: Any) -> None:
        if (answer := self.answer(data)) is not None:
            self._sendto(answer, addr)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # STUN over TCP: frames cut by the length field (RFC 8489 6.2.2)
            header = await reader.readexactly(20)
            size = int.from_bytes(header[2:4], "big")
            if (answer := self.answer(header + await reader.readexactly(size))) is None:
                return
            writer.write(answer)
            await writer.drain()


# --- floods of valid datagrams -----------------------------------------------------------------


def first_packet(datagram: bytes) -> bytes:
    """The first QUIC long-header packet of a (possibly coalesced) datagram (RFC 9000 17.2):
    first byte, version, both connection ids, an Initial's token, then Length bytes."""
    pos = 5
    pos += 1 + datagram[pos]  # destination connection id
    pos += 1 + datagram[pos]  # source connection id
    if (datagram[0] & 0x30) == 0:  # Initial: a token first
        length, pos = _varint(datagram, pos)
        pos += length
    length, pos = _varint(datagram, pos)
    return datagram[:pos + length]


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A QUIC variable-length integer at `pos` (RFC 9000 16): its value and where it ends."""
    size = 1 << (data[pos] >> 6)
    value = data[pos] & 0x3F
    for byte in data[pos + 1:pos + size]:
        value = (value << 8) | byte
    return value, pos + size


class UdpFloodServer(MockServer):
    """Floods of valid datagrams (DNS, STUN, QUIC); see the module docstring."""

    BEHAVIOURS: tuple[str, ...] = ("dns", "stun", "quic")
    serves_tcp, serves_udp = False, True
    _BATCH = 64  # datagrams sent between two turns of the loop

    def __init__(self, behaviour: str = "dns", *, host: str = "127.0.0.1", port: int = 0,
                 ca: TestCA | None = None, name: str = "mock.test", **options: Any) -> None:
        super().__init__(behaviour, host, port, name, options, ("seconds", "address"))
        self.ca = ca or TestCA()
        self.seconds = float(options.get("seconds", 30.0))
        self.address = str(options.get("address", "127.0.0.9"))
        self.sent = 0  # datagrams of the flood, all clients
        self._target: tuple[Any, bytes] | None = None  # the latest client and its answer
        self._until = 0.0
        self._pump: asyncio.Task[None] | None = None
        self._quic: dict[Any, bytes] = {}  # client -> the Initial packet that answers it
        self._configuration: Any = None

    async def start(self) -> None:
        if self.behaviour == "quic":
            from probe.mock.quic import QuicServer

            self._configuration = QuicServer._configuration(self.ca.issue(self.name, self.host),
                                                            ["h3"])
        await super().start()

    async def stop(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(BaseException):
                await self._pump
        await super().stop()

    def answer(self, data: bytes, addr: Any) -> bytes | None:
        """The valid answer to a client's datagram that the flood repeats; None: no flood."""
        if self.behaviour == "dns":
            import dns.exception
            import dns.message

            from probe.mock.dns import build_reply

            try:
                query = dns.message.from_wire(data)
            except dns.exception.DNSException:
                return None
            fits = ":" in self.address if query.question[0].rdtype == 28 else "." in self.address
            return build_reply(query, {}, addresses=[self.address] if fits else []).to_wire()
        if self.behaviour == "stun":
            from probe.mock.stun import StunServer

            answers = StunServer("ok").answers(data, (str(addr[0]), int(addr[1])))
            return answers[0][1] if answers else None
        return self._quic_initial(data, addr)

    def _quic_initial(self, data: bytes, addr: Any) -> bytes | None:
        if addr in self._quic:
            return self._quic[addr]
        from aioquic.quic.connection import QuicConnection

        from probe.wire.quic import QuicCodecError, decode_long_header

        try:
            header = decode_long_header(data)
        except QuicCodecError:
            return None
        if header.version not in self._configuration.supported_versions:
            return None
        connection = QuicConnection(configuration=self._configuration,
                                    original_destination_connection_id=header.dcid)
        loop = asyncio.get_running_loop()
        connection.receive_datagram(data, addr, now=loop.time())
        flight = [d for d, _ in connection.datagrams_to_send(now=loop.time())]
        if not flight:
            return None
        self._quic[addr] = packet = first_packet(flight[0])
        return packet

    def datagram(self, data: bytes, addr: Any) -> None:
        answer = self.answer(data, addr)
        if answer is None:
            return
        self._target = (addr, answer)
        self._until = asyncio.get_running_loop().time() + self.seconds
        if self._pump is None or self._pump.done():
            self._pump = asyncio.ensure_future(self._flood())

    async def _flood(self) -> None:
        loop = asyncio.get_running_loop()
        while self._target is not None and self._udp is not None and loop.time() < self._until:
            udp: Any = self._udp  # asyncio's datagram transport has a write buffer too
            if udp.get_write_buffer_size():  # the socket is full: let it drain
                await asyncio.sleep(0)
                continue
            addr, answer = self._target
            for _ in range(self._BATCH):
                self._sendto(answer, addr)
            self.sent += self._BATCH
            await asyncio.sleep(0)


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
