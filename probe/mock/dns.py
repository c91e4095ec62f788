"""Mock DNS servers (UDP and TCP on one port) and a DNS-over-HTTPS server that lie on purpose.

DnsServer behaviours (`records` maps a name to its addresses, both families mixed):
  ok        answer from `records`; NXDOMAIN for a name not in them
  nxdomain  NXDOMAIN for every name
  bogon     the `bogon` address (default 10.10.34.34, Iran's sinkhole) for every name; nothing
            may ever connect to it in tests: prefer `lie` with a loopback address there
  lie       the `lie` address (default 127.0.0.66) for every name
  inject    two UDP replies to each query with its id: a forged one (the `lie` address) first,
            the genuine one `inject_delay` seconds later (default 0.02), as an on-path injector
            races the real resolver
  silent    never answer
  servfail  SERVFAIL
  refused   REFUSED
  truncate  over UDP an empty reply with the TC bit set; over TCP the full answer
An address of the other family than the question's is left out (an empty NOERROR answer).

DohServer (RFC 8484 over HTTP/1.1 and TLS, certificate from a TestCA for `name` and the listen
address) answers application/dns-message POST and GET on any path from its own `records`:
  ok, nxdomain, servfail  as above, inside an HTTP 200
  http_error              HTTP 500
  silent                  reads the request, never answers
  untrusted               a certificate from a second CA the client does not trust
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import ssl
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import h11

from probe.mock.certs import TestCA
from probe.mock.server import MockServer, drain_until_closed

DOH_TYPE = "application/dns-message"
_TTL = 60
# What dnspython raises on malformed wire data (its own errors, and a few from struct/codecs).
_GARBAGE = (dns.exception.DNSException, ValueError, LookupError)


def _name_of(query: dns.message.Message) -> str:
    return query.question[0].name.to_text(omit_final_dot=True).lower()


def _fits(address: str, rdtype: int) -> bool:
    version = ipaddress.ip_address(address).version
    return (version, rdtype) in ((4, dns.rdatatype.A), (6, dns.rdatatype.AAAA))


def build_reply(query: dns.message.Message, records: dict[str, list[str]],
                rcode: dns.rcode.Rcode = dns.rcode.NOERROR, addresses: list[str] | None = None,
                ttl: int = _TTL) -> dns.message.Message:
    """A reply to `query`: the given rcode, or the given addresses (default: from records)."""
    reply = dns.message.make_response(query)
    question = query.question[0]
    if rcode != dns.rcode.NOERROR:
        reply.set_rcode(rcode)
        return reply
    if addresses is None:
        known = records.get(_name_of(query))
        if known is None:
            reply.set_rcode(dns.rcode.NXDOMAIN)
            return reply
        addresses = known
    fitting = [a for a in addresses if _fits(a, question.rdtype)]
    if fitting:
        reply.answer.append(dns.rrset.from_text_list(
            question.name, ttl, "IN", dns.rdatatype.to_text(question.rdtype), fitting))
    return reply


class DnsServer(MockServer):
    """A DNS server on UDP and TCP, same port; see the module docstring for the behaviours."""

    BEHAVIOURS: tuple[str, ...] = (
        "ok", "nxdomain", "bogon", "lie", "inject", "silent", "servfail", "refused", "truncate",
    )
    _OPTIONS = frozenset({"records", "bogon", "lie", "inject_delay", "ttl"})
    serves_udp = True

    def __init__(self, behaviour: str = "ok", *, host: str = "127.0.0.1", port: int = 0,
                 ca: TestCA | None = None, name: str = "dns.test", **options: Any) -> None:
        super().__init__(behaviour, host, port, name, options, self._OPTIONS)
        self.ca = ca
        self.records: dict[str, list[str]] = {
            k.lower().rstrip("."): list(v) for k, v in (options.get("records") or {}).items()}
        self.bogon: str = options.get("bogon", "10.10.34.34")
        self.lie: str = options.get("lie", "127.0.0.66")
        self.inject_delay: float = float(options.get("inject_delay", 0.02))
        self.ttl: int = int(options.get("ttl", _TTL))
        self.queries = 0  # how many questions arrived, over both transports

    def reply(self, query: dns.message.Message, *, over_tcp: bool = False,
              forged: bool = False) -> dns.message.Message | None:
        """The reply this server's behaviour calls for; None for silence."""
        b = self.behaviour
        rcodes = {"nxdomain": dns.rcode.NXDOMAIN, "servfail": dns.rcode.SERVFAIL,
                  "refused": dns.rcode.REFUSED}
        if b == "silent":
            return None
        if b in rcodes:
            return build_reply(query, self.records, rcodes[b])
        if b == "truncate" and not over_tcp:
            reply = build_reply(query, self.records, addresses=[])
            reply.flags |= dns.flags.TC
            return reply
        if b == "bogon":
            return build_reply(query, self.records, addresses=[self.bogon], ttl=self.ttl)
        if b == "lie" or forged:
            return build_reply(query, self.records, addresses=[self.lie], ttl=self.ttl)
        return build_reply(query, self.records, ttl=self.ttl)

    def _parse(self, wire: bytes) -> dns.message.Message | None:
        try:
            query = dns.message.from_wire(wire)
        except _GARBAGE:  # a hostile client's bytes: ignore them
            return None
        if query.flags & dns.flags.QR or len(query.question) != 1:
            return None
        self.queries += 1
        return query

    def datagram(self, wire: bytes, addr: Any) -> None:
        query = self._parse(wire)
        if query is None:
            return
        if self.behaviour == "inject":
            forged = self.reply(query, forged=True)
            genuine = self.reply(query)
            assert forged is not None and genuine is not None
            self._sendto(forged.to_wire(), addr)
            asyncio.get_running_loop().call_later(
                self.inject_delay, self._sendto, genuine.to_wire(), addr)
            return
        reply = self.reply(query)
        if reply is not None:
            self._sendto(reply.to_wire(), addr)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # until the client leaves or sends garbage
            size = int.from_bytes(await reader.readexactly(2), "big")
            query = self._parse(await reader.readexactly(size))
            reply = self.reply(query, over_tcp=True) if query is not None else None
            if reply is not None:
                wire = reply.to_wire()
                writer.write(len(wire).to_bytes(2, "big") + wire)
                await writer.drain()


class DohServer(MockServer):
    """A DNS-over-HTTPS server (HTTP/1.1); see the module docstring for the behaviours."""

    BEHAVIOURS: tuple[str, ...] = ("ok", "nxdomain", "servfail", "http_error", "silent",
                                   "untrusted")
    _OPTIONS = frozenset({"records"})

    def __init__(self, behaviour: str = "ok", *, host: str = "127.0.0.1", port: int = 0,
                 ca: TestCA | None = None, name: str = "doh.test", **options: Any) -> None:
        super().__init__(behaviour, host, port, name, options, self._OPTIONS)
        self.ca = ca or TestCA()
        self.records: dict[str, list[str]] = {
            k.lower().rstrip("."): list(v) for k, v in (options.get("records") or {}).items()}
        self.requests = 0
        self._contexts: dict[str, ssl.SSLContext] = {}

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}/dns-query"

    def _context(self, untrusted: bool) -> ssl.SSLContext:
        kind = "untrusted" if untrusted else "ok"
        if kind not in self._contexts:
            ca = TestCA("probe untrusted DoH CA") if untrusted else self.ca
            leaf = ca.issue(self.name, self.host)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            with tempfile.TemporaryDirectory() as folder:  # load_cert_chain reads files only
                context.load_cert_chain(*leaf.write(Path(folder), "leaf"))
            context.set_alpn_protocols(["http/1.1"])
            self._contexts[kind] = context
        return self._contexts[kind]

    async def start(self) -> None:
        # The certificate is chosen per connection (SNI callback), so `behaviour` may change.
        context = self._context(False)
        untrusted = self._context(True)

        def pick(sock: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
            sock.context = untrusted if self.behaviour == "untrusted" else context

        context.sni_callback = pick
        self._ssl = context
        await super().start()

    def answer(self, request: h11.Request, body: bytes) -> tuple[int, bytes]:
        """(HTTP status, body) for one DoH request."""
        if self.behaviour == "http_error":
            return 500, b""
        if request.method == b"GET":
            values = parse_qs(urlsplit(request.target.decode("ascii", "replace")).query)
            encoded = values.get("dns", [""])[0]
            try:  # RFC 8484 4.1: base64url without padding
                body = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            except ValueError:
                return 400, b""
        try:
            query = dns.message.from_wire(body)
            if len(query.question) != 1:
                raise ValueError("one question expected")
        except _GARBAGE:
            return 400, b""
        rcode = {"nxdomain": dns.rcode.NXDOMAIN, "servfail": dns.rcode.SERVFAIL}.get(
            self.behaviour, dns.rcode.NOERROR)
        return 200, build_reply(query, self.records, rcode).to_wire()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        http = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = b""
        while True:  # a hostile or broken client's errors end this connection only
            event = http.next_event()
            if event is h11.NEED_DATA:
                http.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                request, body = event, b""
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                self.requests += 1
                if self.behaviour == "silent":
                    await drain_until_closed(reader)
                    return
                status, payload = self.answer(request, body)
                headers = [("content-type", DOH_TYPE), ("content-length", str(len(payload)))]
                writer.write(http.send(h11.Response(status_code=status, headers=headers)) or b"")
                writer.write(http.send(h11.Data(data=payload)) or b"")
                writer.write(http.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                if http.our_state is h11.MUST_CLOSE:
                    return
                http.start_next_cycle()
            else:  # ConnectionClosed, or anything unexpected
                return
