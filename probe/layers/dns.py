"""The dns layer: ask the resolver directly, cross-check through DoH, record what each said.

Strategy. getaddrinfo folds NXDOMAIN, SERVFAIL, refusal and silence into one error, so the layer
speaks DNS itself (dnspython builds and parses messages; the I/O is ours): A and AAAA at once over
UDP to the configured resolver, or to the first nameserver of /etc/resolv.conf for `system`, and
over TCP when a reply comes back truncated. After the first UDP reply it keeps listening for
INJECTION_WINDOW seconds: an on-path injector's forged reply races the genuine one, so a second,
different reply to the same query is the signature of injection. It is recorded, and the first
reply is still the one used, as an application would. When `settings.doh` is set the same
questions go through DNS-over-HTTPS (RFC 8484) at the same time. When the resolver's answer
shares nothing with a reference (the cross-check, the genuine reply), or is private with nothing
to compare it with, its first address is asked for a certificate valid for the name. Facts only:
`probe.classify_dns` judges them, for every scheme alike since every layer resolves through here.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probe import failures as F
from probe.catalog import Job, Settings, split_host_port
from probe.failures import Failed, classify_exception, classify_udp_error
from probe.layers import Context, Layer
from probe.layers.udp import open_udp
from probe.observations import DnsFacts, Sample
from probe.wire.dns import (
    RDTYPES,
    Reply,
    frame_tcp,
    is_bogon,
    is_public_name,
    make_query,
    parse_reply,
    shares_address,
    system_nameservers,
)

if TYPE_CHECKING:
    import httpx  # imported where used: ~90 ms, needed only when a DoH cross-check is set

INJECTION_WINDOW = 0.2  # seconds to keep listening after the first UDP reply
# A query unanswered after these many seconds (from the first send) goes again, as stub
# resolvers retransmit: a lost datagram (a second's outage) is not a failed lookup.
RETRANSMIT_AT = (1.0, 3.0)
CERT_PORT = 443  # where an answer is asked for a certificate, unless the target is tls/https
RESOLV_CONF = "/etc/resolv.conf"
DOH_TYPE = "application/dns-message"  # RFC 8484 section 6
_DOH_KEY = "dns.doh"
_MAX_TCP_MESSAGES = 16  # a TCP peer sending other replies than ours: judged talking nonsense
_CERT_KEY = "dns.certificates"
_RESOLVER_KEY = "dns.resolver"


@dataclass
class Lookup:
    """One question's outcome: the first reply (None when none came) and how it got there."""

    reply: Reply | None = None
    failure: str | None = None
    error: str | None = None
    transport: str = "udp"
    later: Reply | None = None  # a second, different reply to the same query: injection
    truncated: bool = False
    ms: float | None = None  # until the first reply (or the failure), not the listening after it
    queries: int = 1

    @property
    def outcome(self) -> str | None:
        return self.reply.failure if self.reply is not None else self.failure


# --- the resolver ------------------------------------------------------------------------


def resolver_of(settings: Settings) -> tuple[str, str, int]:
    """(kind, address, port) of the resolver to ask: 'system' or 'configured'."""
    if settings.resolver != "system":
        host, port = split_host_port(settings.resolver, 53)
        return "configured", host, port
    try:
        text = Path(RESOLV_CONF).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    # With no nameserver line the C library asks the local host: do the same.
    return "system", (system_nameservers(text) or ["127.0.0.1"])[0], 53


class _Datagrams(asyncio.DatagramProtocol):
    """Queues what arrives on a connected UDP socket: datagrams and ICMP errors alike."""

    def __init__(self) -> None:
        self.arrived: asyncio.Queue[bytes | Exception] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.arrived.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        self.arrived.put_nowait(exc)


async def query_udp(server: str, port: int, name: str, rdtype: str, timeout: float) -> Lookup:
    """One question over UDP: the first reply, and a different later one if any arrives.

    Sent again at RETRANSMIT_AT while no reply came (the same message: a reply to any copy
    counts). A second, different reply is injection only when the first came before any
    retransmission: an on-path injector answers within milliseconds, and a resolver answering
    two copies may legitimately rotate its addresses."""
    loop = asyncio.get_running_loop()
    query = make_query(name, rdtype)
    wire = query.to_wire()
    start = loop.time()
    deadline = start + timeout
    first_at = deadline
    try:
        transport, protocol = open_udp(_Datagrams, server, port)
    except OSError as exc:
        failure, message = classify_udp_error(exc)
        return Lookup(failure=failure, error=message)
    first: Reply | None = None
    later: Reply | None = None
    garbage = queries = 0
    resend = [start + at for at in RETRANSMIT_AT if at < timeout]
    try:
        transport.sendto(wire)
        queries = 1
        end = deadline
        while (remaining := end - loop.time()) > 0:
            if first is None and resend:
                remaining = min(remaining, resend[0] - loop.time())
            try:
                async with asyncio.timeout(max(remaining, 0.0)):
                    item = await protocol.arrived.get()
            except TimeoutError:
                if first is None and resend and loop.time() >= resend[0]:
                    resend.pop(0)
                    transport.sendto(wire)
                    queries += 1
                    continue
                break
            if isinstance(item, Exception):
                if first is None:
                    failure, message = classify_udp_error(item)
                    return Lookup(failure=failure, error=message,
                                  ms=_ms_since(start, loop.time()), queries=queries)
                continue
            reply = parse_reply(item, query)
            if reply is None:
                garbage += 1
            elif first is None:
                first, first_at = reply, loop.time()
                if reply.truncated:
                    break
                end = min(deadline, loop.time() + INJECTION_WINDOW)
                if queries > 1:
                    break  # no injection to listen for (see above)
            elif later is None and not reply.same_as(first):
                later = reply
    finally:
        transport.close()
    if first is None:
        took = _ms_since(start, loop.time())
        if garbage:
            return Lookup(failure=F.PROTOCOL_ERROR, ms=took, queries=queries,
                          error=f"{garbage} datagrams came back, none a DNS reply to the question")
        return Lookup(failure=F.TIMEOUT, ms=took, queries=queries,
                      error=f"no reply within {timeout:g} s ({queries} queries)")
    return Lookup(reply=first, later=later, ms=_ms_since(start, first_at), queries=queries)


async def query_tcp(server: str, port: int, name: str, rdtype: str, timeout: float) -> Lookup:
    """One question over TCP, after a UDP reply came back truncated (RFC 7766)."""
    query = make_query(name, rdtype)
    garbage = 0
    try:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(server, port)
                try:
                    writer.write(frame_tcp(query.to_wire()))
                    await writer.drain()
                    for _ in range(_MAX_TCP_MESSAGES):  # skip replies to other queries
                        size = int.from_bytes(await reader.readexactly(2), "big")
                        reply = parse_reply(await reader.readexactly(size), query)
                        if reply is not None:
                            return Lookup(reply=reply, transport="tcp", truncated=True)
                        garbage += 1
                    raise Failed(F.PROTOCOL_ERROR, f"{garbage} messages over TCP, none a DNS "
                                                   "reply to the question")
                finally:
                    writer.transport.abort()
        except TimeoutError:
            if garbage:
                raise Failed(F.PROTOCOL_ERROR, f"{garbage} messages over TCP, none a DNS reply "
                                               "to the question") from None
            raise Failed(F.TIMEOUT, f"no reply over TCP within {timeout:g} s") from None
    except (OSError, EOFError, Failed) as exc:  # IncompleteReadError is an EOFError
        failure, message = classify_exception(exc)
        return Lookup(failure=failure, error=f"over TCP: {message}", transport="tcp",
                      truncated=True)


async def query(server: str, port: int, name: str, rdtype: str, timeout: float) -> Lookup:
    """UDP first; TCP when the UDP reply is truncated (RFC 7766)."""
    start = time.perf_counter()
    lookup = await query_udp(server, port, name, rdtype, timeout)
    if lookup.reply is not None and lookup.reply.truncated:
        lookup = await query_tcp(server, port, name, rdtype, timeout)
        lookup.ms = _ms(start)
    return lookup


# --- the cross-check ---------------------------------------------------------------------


def _doh_client(job: Job, ctx: Context) -> httpx.AsyncClient:
    """One HTTP/2-capable client per trust set for the whole run, closed by ctx.aclose()."""
    import httpx
    key = f"{_DOH_KEY}:{job.ca_files}"
    client = ctx.cache.get(key)
    if not isinstance(client, httpx.AsyncClient):
        # Some DoH servers speak only HTTP/2 and drop HTTP/1.1 (CENSORSHIP.md): offer both. The
        # context has its own ALPN key because httpx sets ALPN on the context it is given.
        context = ctx.ssl_context(job.ca_files, alpn=("h2", "http/1.1"))
        client = httpx.AsyncClient(http2=True, verify=context, trust_env=False)
        ctx.cache[key] = client
    return client


async def doh_query(client: httpx.AsyncClient, url: str, name: str, rdtype: str,
                    timeout: float) -> Reply:
    """One question over DoH, POST with application/dns-message (RFC 8484 section 4.1)."""
    question = make_query(name, rdtype, doh=True)
    response = await client.post(
        url, content=question.to_wire(), timeout=timeout,
        headers={"content-type": DOH_TYPE, "accept": DOH_TYPE})
    if response.status_code != 200:
        raise Failed(F.HTTP_STATUS, f"DoH server answered HTTP {response.status_code}")
    reply = parse_reply(response.content, question)
    if reply is None:
        raise Failed(F.PROTOCOL_ERROR, "the DoH answer is not a DNS reply to the question")
    return reply


@dataclass(frozen=True)
class Crosscheck:
    """What the DoH server said for the name (the `crosscheck_*` facts)."""

    answers: list[str] | None = None
    rcode: str | None = None
    ms: float | None = None
    failure: str | None = None
    error: str | None = None


async def crosscheck(job: Job, ctx: Context, name: str, url: str) -> Crosscheck:
    """The DoH server's answers for the name."""
    import httpx

    client = _doh_client(job, ctx)
    start = time.perf_counter()
    try:
        try:
            async with asyncio.timeout(job.timeout + 0.5):  # httpx's own timeout comes first
                replies = await asyncio.gather(
                    *(doh_query(client, url, name, t, job.timeout) for t in RDTYPES))
        except TimeoutError:
            raise Failed(F.TIMEOUT, f"no DoH answer within {job.timeout:g} s") from None
    except (httpx.HTTPError, OSError, Failed) as exc:
        failure, message = classify_exception(exc)
        return Crosscheck(failure=failure, error=message, ms=_ms(start))
    rcodes = [r.rcode for r in replies]
    return Crosscheck(
        answers=list(dict.fromkeys(a for r in replies for a in r.addresses)),
        rcode="NXDOMAIN" if "NXDOMAIN" in rcodes else rcodes[0],
        ms=_ms(start))


# --- the certificate check ---------------------------------------------------------------


def cert_port(job: Job) -> int:
    """Where to ask an answer for a certificate: the target's own port when it speaks TLS."""
    endpoint = job.endpoint
    if endpoint.scheme in ("tls", "https") and endpoint.port:
        return endpoint.port
    return CERT_PORT


@dataclass(frozen=True)
class CertificateCheck:
    """Did an answered address serve a certificate valid for the name (the `cert_*` facts)?"""

    address: str
    port: int
    valid: bool
    ms: float
    failure: str | None = None
    error: str | None = None


async def check_certificate(job: Job, ctx: Context, name: str, address: str,
                            port: int) -> CertificateCheck:
    """Does `address:port` serve a certificate valid for `name`? Once per run and key."""
    cache: dict[tuple[Any, ...], CertificateCheck] = ctx.cache.setdefault(_CERT_KEY, {})
    key = (name, address, port, job.ca_files)
    if key in cache:
        return cache[key]
    start = time.perf_counter()
    try:
        try:
            async with asyncio.timeout(job.timeout):
                _, writer = await asyncio.open_connection(
                    address, port, ssl=ctx.ssl_context(job.ca_files), server_hostname=name)
        except TimeoutError:
            raise Failed(F.TIMEOUT, f"no TLS handshake within {job.timeout:g} s") from None
    except Exception as exc:  # noqa: BLE001 - ssl and OS errors, or a peer's surprise: a fact
        failure, message = classify_exception(exc)
        checked = CertificateCheck(address, port, False, _ms(start), failure, message)
    else:
        writer.transport.abort()
        checked = CertificateCheck(address, port, True, _ms(start))
    cache[key] = checked
    return checked


# --- the layer ---------------------------------------------------------------------------


async def _ask_resolver(server: str, port: int, name: str, timeout: float
                        ) -> tuple[list[Lookup], float]:
    """A and AAAA at once; the time is until both first replies (or failures) were in."""
    start = time.perf_counter()
    lookups = await asyncio.gather(*(query(server, port, name, t, timeout) for t in RDTYPES))
    times = [lk.ms for lk in lookups if lk.ms is not None]
    return list(lookups), max(times) if times else _ms(start)


def _outcome_facts(lookups: list[Lookup]) -> dict[str, Any]:
    """DnsFacts fields from the A and AAAA lookups: answers, rcode, ttl, failure, injection."""
    replies = [lk.reply for lk in lookups if lk.reply is not None]
    answers = list(dict.fromkeys(a for r in replies for a in r.addresses))
    ttls = [r.ttl for r in replies if r.ttl is not None]
    rcodes = [r.rcode for r in replies]
    facts: dict[str, Any] = {
        "ok": bool(answers),
        "answers": answers,
        "rcode": "NXDOMAIN" if "NXDOMAIN" in rcodes else (rcodes[0] if rcodes else None),
        "ttl": min(ttls) if ttls else None,
        "transport": "tcp" if any(lk.transport == "tcp" for lk in lookups) else "udp",
    }
    if any(lk.truncated for lk in lookups):
        facts["truncated"] = True
    if any(lk.queries > 1 for lk in lookups):
        facts["queries"] = max(lk.queries for lk in lookups)
    injected = [(lk.reply, lk.later) for lk in lookups
                if lk.later is not None and lk.reply is not None]
    if injected:
        facts["injected"] = True
        facts["first_answers"] = [a for first, _ in injected for a in first.addresses]
        facts["later_answers"] = [a for _, later in injected for a in later.addresses]
        facts["first_rcode"] = injected[0][0].rcode
        facts["later_rcode"] = injected[0][1].rcode
    for rdtype, lk in zip(RDTYPES, lookups, strict=True):
        if answers and lk.failure is not None:  # the other family answered: note, not fail
            facts[f"{rdtype.lower()}_failure"] = lk.failure
    if not answers:
        outcomes = [lk.outcome for lk in lookups]
        if F.NXDOMAIN in outcomes:
            failure = F.NXDOMAIN
        else:
            failure = next((o for o in outcomes if o and o != F.NO_ANSWER), F.NO_ANSWER)
        facts["failure"] = failure
        facts["error"] = _failure_message(failure, lookups)
    return facts


def _failure_message(failure: str, lookups: list[Lookup]) -> str:
    for lk in lookups:
        if lk.outcome == failure:
            if lk.reply is not None:
                return lk.reply.rcode if failure != F.NO_ANSWER else "no A or AAAA record"
            return lk.error or failure
    return failure


async def lookup(job: Job, ctx: Context, name: str) -> DnsFacts:
    """Resolve `name` the way this run is configured to: the whole `dns` phase."""
    resolver = ctx.cache.get(_RESOLVER_KEY)
    if resolver is None:
        resolver = ctx.cache[_RESOLVER_KEY] = resolver_of(ctx.settings)
    kind, server, port = resolver
    doh = ctx.settings.doh
    if doh:
        _doh_client(job, ctx)  # built before the clock starts: loading the trust store is slow
    asked = _ask_resolver(server, port, name, job.timeout)
    checked: Crosscheck | None = None
    if doh:
        (lookups, ms), checked = await asyncio.gather(asked, crosscheck(job, ctx, name, doh))
    else:
        lookups, ms = await asked
    facts: dict[str, Any] = {"name": name, "resolver": kind}
    if kind == "configured":  # the user's own setting; a system resolver's address stays out
        facts["resolver_address"] = ctx.settings.resolver
    facts.update(_outcome_facts(lookups))
    if checked is not None:
        facts.update({f"crosscheck_{k}": v for k, v in vars(checked).items() if v is not None})
    if facts["ok"]:
        cert = await _maybe_check_certificate(job, ctx, name, facts)
        if cert is not None:
            facts.update(cert_address=cert.address, cert_port=cert.port,
                         cert_valid_for_name=cert.valid, cert_ms=cert.ms)
            if not cert.valid:
                facts.update(cert_failure=cert.failure, cert_error=cert.error)
    return DnsFacts(ms=ms, **facts)


async def _maybe_check_certificate(job: Job, ctx: Context, name: str,
                                   facts: dict[str, Any]) -> CertificateCheck | None:
    """Ask the answer for a certificate when nothing else vouches for it."""
    answers: list[str] = facts.get("first_answers") or facts["answers"]
    references = list(facts.get("crosscheck_answers") or []) + list(
        facts.get("later_answers") or [])
    if references:
        if shares_address(answers, references):
            return None
    elif not (is_bogon(answers[0]) and is_public_name(name)):
        return None  # nothing to compare with, nothing suspicious on its face
    return await check_certificate(job, ctx, name, answers[0], cert_port(job))


async def resolve(job: Job, ctx: Context, sample: Sample) -> str | None:
    """The address to connect to, recording the `dns` facts when a name was resolved.

    Returns None when resolution failed (the failed facts are in the sample).
    """
    if job.target.address:
        return job.target.address
    endpoint = job.endpoint
    if endpoint.is_ip:
        return endpoint.host
    facts = sample.add(await lookup(job, ctx, endpoint.host))
    return facts.answers[0] if facts.ok and facts.answers else None


def budget(job: Job) -> float:
    """UDP, the TCP retry after truncation, and the certificate check: three timeouts."""
    return job.timeout * 3 + INJECTION_WINDOW + 1.0


def _ms(start: float) -> float:
    return _ms_since(start, time.perf_counter())


def _ms_since(start: float, end: float) -> float:
    return round((end - start) * 1000, 3)


async def measure(job: Job, ctx: Context) -> Sample:
    sample = Sample()
    address = await resolve(job, ctx, sample)
    if "dns" not in sample.phases and address is not None:  # an IP literal: nothing to ask
        sample.add(DnsFacts(ok=True, ms=0.0, answers=[address], literal=True))
    return sample


LAYER = Layer(measure=measure, budget=budget)
