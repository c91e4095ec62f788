"""The tls layer: a TLS handshake over the tcp layer (`tls://`, and under https), and the SNI swap.

Strategy: TLS runs over memory BIOs on our own non-blocking socket (`Wire`), not inside asyncio's
transport. So every raw byte is seen: whether the server said anything at all after the
ClientHello (a ServerHello, an alert) and how the connection ended. That is what tells a timeout
(nothing came back) from a reset (RST), an EOF (FIN) and an alert, which asyncio's SSL transport
folds into one "connection lost". The same `Wire` carries HTTP for the https layer, counting raw
bytes on the wire (a throttled link delivers TLS records slowly: progress shows in raw bytes
long before the first decrypted byte).

SNI swap (the `sni_control` diagnosis): censors keep blocking an IP:port for a while after a
trigger (a residual block: China 90-180 s), so a control handshake sent after the failures would
often fail too and hide the SNI filtering. So the control handshake is taken BEFORE the first
sample of a run to each address:port, once, and kept; `diagnose` only reports it, and only when
the target failed with a timeout, reset, EOF or alert (never after a certificate error: an
interceptor answers every SNI, and swapping would mislabel interception as SNI filtering).
The cost is one extra handshake per distinct address:port in a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import socket
import ssl
import time
from dataclasses import dataclass

from probe.catalog import Job
from probe.failures import (
    CONNECTION_RESET,
    EOF_,
    HOSTNAME_MISMATCH,
    MALFORMED_CERTIFICATE,
    PROTOCOL_ERROR,
    TIMEOUT,
    TLS_ALERT,
    UNTRUSTED_CERTIFICATE,
    Failed,
    classify_exception,
)
from probe.layers import Context, Layer
from probe.layers.dns import resolve
from probe.layers.tcp import abort, connect, elapsed_ms, other_addresses, target_port
from probe.observations import (
    Facts,
    Observation,
    PresentedCertificate,
    Sample,
    SniControl,
    TcpFacts,
    TlsFacts,
)

# Failures after which the SNI swap tells something (see the module docstring).
SWAP_AFTER = frozenset({TIMEOUT, CONNECTION_RESET, EOF_, TLS_ALERT})

_RECORD_HANDSHAKE, _RECORD_ALERT = 0x16, 0x15
_RECV_SIZE = 65536


class Wire:
    """A connected socket, with TLS over memory BIOs once `start_tls` succeeded.

    Counts raw bytes received. When `idle` is set, a read that sees no raw byte for `idle`
    seconds raises TimeoutError: progress is judged on the wire, not on decrypted data.

    A peer that never pauses (issue 22): `loop.sock_recv` returns at once, without suspending,
    while the socket holds data, so a reader fed by a flood would never give the event loop a
    turn, and no deadline, no signal handler and no other target would ever run again. So a
    raw read that found data waiting yields to the loop once (`asyncio.sleep(0)`) before it
    returns: between two turns of the loop a connection does at most one read's work
    (64 KiB, whatever the caller makes of them), and the deadlines around it fire.
    And a read gives up, as a protocol error, after MAX_RECORDS_WITHOUT_DATA raw bytes in
    which TLS found no application byte (a flood of tickets, key updates or empty records):
    one record is at most 16 KiB and a server sends a ticket or two.
    """

    MAX_RECORDS_WITHOUT_DATA = 1 << 20

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._loop = asyncio.get_running_loop()
        self.raw_received = 0
        self.last_raw_at = time.perf_counter()  # when the peer last sent anything
        self.first_byte: int | None = None  # the first byte from the peer: a TLS record type
        self.idle: float | None = None
        self.closed = False

    async def _recv_raw(self) -> bytes:
        try:
            data = self.sock.recv(_RECV_SIZE)  # non-blocking: what is waiting, if anything
        except (BlockingIOError, InterruptedError):
            if self.idle is None:
                data = await self._loop.sock_recv(self.sock, _RECV_SIZE)
            else:
                async with asyncio.timeout(self.idle):
                    data = await self._loop.sock_recv(self.sock, _RECV_SIZE)
        else:
            # Found waiting: the loop's turn first (timers, signals, other targets), or a
            # peer that keeps the socket full would hold it for good.
            await asyncio.sleep(0)
        if data:
            if self.first_byte is None:
                self.first_byte = data[0]
            self.raw_received += len(data)
            self.last_raw_at = time.perf_counter()
        return data

    async def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            await self._loop.sock_sendall(self.sock, data)

    async def start_tls(self, context: ssl.SSLContext, sni: str | None) -> None:
        """Run a client handshake; raises what the handshake ran into (classified by the caller)."""
        tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=sni)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            await self._flush()
            data = await self._recv_raw()
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()  # the next do_handshake() raises SSLEOFError
        await self._flush()  # our Finished
        self.tls = tls

    async def read(self, max_bytes: int = _RECV_SIZE) -> bytes:
        """Application bytes; b"" once the peer closed (with or without close_notify).
        Raises Failed(PROTOCOL_ERROR) after MAX_RECORDS_WITHOUT_DATA raw bytes without one."""
        fed = 0  # raw bytes given to TLS since this read began, none of them application data
        while True:
            if self.tls is not None:
                try:
                    return self.tls.read(max_bytes)
                except ssl.SSLWantReadError:
                    pass
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    return b""
                if fed > self.MAX_RECORDS_WITHOUT_DATA:
                    raise Failed(PROTOCOL_ERROR, f"the server flooded: {fed} bytes of TLS "
                                                 "records without application data")
            data = await self._recv_raw()
            if self.tls is None or not data:
                if self.tls is not None:
                    self._incoming.write_eof()
                return data
            fed += len(data)
            self._incoming.write(data)

    async def write(self, data: bytes) -> None:
        if self.tls is None:
            await self._loop.sock_sendall(self.sock, data)
            return
        self.tls.write(data)
        await self._flush()

    def abort(self) -> None:
        """Close with RST: after a failure, or to stop a transfer we no longer want."""
        if not self.closed:
            self.closed = True
            abort(self.sock)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()


def target_sni(job: Job) -> str:
    return job.target.sni or job.endpoint.host


@dataclass(frozen=True)
class Certificate:
    """What the leaf certificate says: its names and its key's fingerprint; or why it could
    not be read (OpenSSL accepted bytes that no X.509 parser should: a hostile server's)."""

    subject: str | None = None
    issuer: str | None = None
    spki_sha256: str | None = None
    unreadable: str | None = None


@functools.lru_cache(maxsize=256)
def read_certificate(der: bytes) -> Certificate:
    # Parsing the certificate cost 6 % of a handshake's CPU; a run meets the same few
    # certificates again and again (one per service, many targets each).
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_der_x509_certificate(der)
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return Certificate(subject=cert.subject.rfc4514_string(),
                           issuer=cert.issuer.rfc4514_string(),
                           spki_sha256=hashlib.sha256(spki).hexdigest())
    except Exception as exc:  # noqa: BLE001 - a peer's bytes must never crash the run
        return Certificate(unreadable=type(exc).__name__)


def _record_type(first_byte: int | None) -> str | None:
    """What the peer's first byte says it sent: a TLS handshake record, an alert, or other."""
    if first_byte is None:
        return None
    names = {_RECORD_HANDSHAKE: "handshake", _RECORD_ALERT: "alert"}
    return names.get(first_byte, f"0x{first_byte:02x}")


def _failure_message(failure: str, message: str, wire: Wire, timeout: float, sni: str) -> str:
    heard = (f"{wire.raw_received} bytes from the server" if wire.raw_received
             else "nothing from the server")
    if failure == TIMEOUT:
        if not wire.raw_received:
            return f"no ServerHello within {timeout:g} s after ClientHello (SNI {sni})"
        return f"handshake incomplete after {timeout:g} s, {heard} (SNI {sni})"
    if failure == CONNECTION_RESET:
        return f"connection reset after ClientHello, {heard} (SNI {sni})"
    if failure == EOF_:
        return f"connection closed after ClientHello, {heard} (SNI {sni})"
    return f"{message} (SNI {sni})"


async def handshake(
    job: Job, ctx: Context, sample: Sample, sock: socket.socket, context: ssl.SSLContext,
    sni: str,
) -> Wire | None:
    """A TLS handshake on a connected socket, recording the `tls` facts; None when it failed
    (the socket is then aborted with RST)."""
    wire = Wire(sock)
    start = time.perf_counter()
    try:
        try:
            async with asyncio.timeout(job.timeout):
                await wire.start_tls(context, sni)
        except TimeoutError:
            raise Failed(TIMEOUT) from None
    except (OSError, Failed) as exc:  # ssl.SSLError is an OSError
        wire.abort()
        failure, message = classify_exception(exc)
        sample.add(TlsFacts(
            ok=False, ms=elapsed_ms(start), failure=failure,
            error=_failure_message(failure, message, wire, job.timeout, sni),
            sni=sni, server_bytes=wire.raw_received, first_record=_record_type(wire.first_byte),
        ))
        return None
    except BaseException:
        wire.abort()
        raise
    tls = wire.tls
    assert tls is not None
    cipher = tls.cipher()
    der = tls.getpeercert(binary_form=True)
    cert = read_certificate(der) if der else Certificate()
    bad: str | None = None
    why: str | None = None
    if cert.unreadable is not None:
        bad = MALFORMED_CERTIFICATE
        why = (f"the server's certificate is malformed ({cert.unreadable}): OpenSSL took it, "
                 f"no X.509 parser should (SNI {sni})")
    facts = TlsFacts(
        ok=bad is None, ms=elapsed_ms(start), failure=bad, error=why, sni=sni,
        version=tls.version(), cipher=cipher[0] if cipher else None,
        alpn=tls.selected_alpn_protocol(), subject=cert.subject, issuer=cert.issuer,
        spki_sha256=cert.spki_sha256)
    sample.add(facts)
    if not facts.ok:
        wire.abort()
        return None
    return wire


# --- the SNI swap ----------------------------------------------------------------------------


class _Control:
    """One control handshake per address:port and run, shared by every target there."""

    def __init__(self, task: asyncio.Task[SniControl]) -> None:
        self.task = task

    async def aclose(self) -> None:  # called by Context.aclose() at the end of the run
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task


def _control_key(address: str, port: int, sni: str) -> str:
    return f"tls.sni_control {address} {port} {sni}"


async def _control_handshake(job: Job, ctx: Context, address: str, port: int,
                             sni: str) -> SniControl:
    scratch = Sample()
    start = time.perf_counter()
    sock = await connect(job, ctx, scratch, address, port)
    if sock is None:
        tcp = scratch.get(TcpFacts)
        assert tcp is not None
        return SniControl(ok=False, ms=elapsed_ms(start), failure=tcp.failure, sni=sni,
                          error=f"control connect failed: {tcp.error}", before_samples=True)
    tried = Sample()
    wire = await handshake(job, ctx, tried, sock, ctx.ssl_context(verify=False), sni)
    if wire is not None:
        wire.abort()
    tls = tried.get(TlsFacts)
    assert tls is not None
    # Reaching the server is the fact that counts: a ServerHello, or an alert it sent.
    reached = tls.ok or tls.failure == TLS_ALERT or tls.first_record in ("handshake", "alert")
    reply = None
    if tls.ok or tls.failure == MALFORMED_CERTIFICATE:
        reply = "server_hello"
    elif reached:  # the server answered, if only with an alert: keep it as a fact
        reply = "alert" if tls.failure == TLS_ALERT else tls.first_record
    facts = tls.model_dump(exclude_unset=True, exclude={"ok", "failure", "error"})
    return SniControl(ok=reached or reply is not None, failure=None if reached else tls.failure,
                      error=None if reached else tls.error, reply=reply, before_samples=True,
                      **facts)


def start_control(job: Job, ctx: Context, address: str, port: int) -> _Control | None:
    """Start the control handshake to address:port, once per run; None when the target's own
    name is the control's. The sample's connect may run beside it: only the ClientHellos
    need an order (see await_control)."""
    sni = ctx.control_sni
    if sni == target_sni(job):
        return None
    key = _control_key(address, port, sni)
    control = ctx.cache.get(key)
    if not isinstance(control, _Control):
        task = asyncio.ensure_future(_control_handshake(job, ctx, address, port, sni))
        control = ctx.cache[key] = _Control(task)
    return control


async def await_control(control: _Control | None) -> None:
    """Wait for the control handshake to be over before a sample sends its ClientHello: a
    residual block the sample's name triggers must not spoil the control."""
    if control is None or control.task.done():  # the common case after the first target
        return
    # Shielded: a sample cancelled by its deadline must not cancel other targets' control.
    with contextlib.suppress(Exception):
        await asyncio.shield(control.task)


async def presented_certificate(job: Job, ctx: Context, address: str,
                                port: int) -> PresentedCertificate:
    """The certificate the server presents for the target's SNI, read without verifying it.

    After a verification failure OpenSSL keeps no certificate, yet the issuer is the evidence
    that tells interception (a national CA) from a platform's own change: one more handshake,
    with verification off, reads it.
    """
    scratch = Sample()
    start = time.perf_counter()
    sock = await connect(job, ctx, scratch, address, port)
    if sock is None:
        tcp = scratch.get(TcpFacts)
        assert tcp is not None
        return PresentedCertificate(ok=False, ms=elapsed_ms(start), failure=tcp.failure,
                                    error=tcp.error)
    wire = await handshake(job, ctx, scratch, sock, ctx.ssl_context(verify=False),
                           target_sni(job))
    tls = scratch.get(TlsFacts)
    assert tls is not None
    if wire is None:
        return PresentedCertificate(ok=False, ms=elapsed_ms(start), failure=tls.failure,
                                    error=tls.error)
    wire.abort()
    return PresentedCertificate(ok=True, ms=elapsed_ms(start), subject=tls.subject,
                                issuer=tls.issuer, spki_sha256=tls.spki_sha256)


async def diagnose(job: Job, ctx: Context, observation: Observation) -> list[Facts]:
    """The steps that apply when every sample failed: other addresses after a connect timeout,
    the certificate after a verification failure, the SNI swap after a handshake timeout,
    reset, EOF or alert (or after the penalty of one: later connects silenced)."""
    if tcp_steps := await other_addresses(job, ctx, observation):
        return list(tcp_steps)
    where: tuple[str, int] | None = None
    for sample in observation.samples:
        failed = sample.failed
        if failed is None or not isinstance(failed[1], TlsFacts):
            continue
        tls, tcp = failed[1], sample.get(TcpFacts)
        if tcp is None or not tcp.ok or tcp.address is None or tcp.port is None:
            return []
        if tls.failure in (UNTRUSTED_CERTIFICATE, HOSTNAME_MISMATCH, MALFORMED_CERTIFICATE):
            return [await presented_certificate(job, ctx, tcp.address, tcp.port)]
        if tls.failure not in SWAP_AFTER:
            return []
        if tls.first_record == "handshake":
            # The server answered this very SNI with a handshake record (a slow or broken
            # server, not a filter, which acts before the server's answer): no swap verdict.
            return []
        where = (tcp.address, tcp.port)
    if where is None:
        return []
    control = ctx.cache.get(_control_key(*where, ctx.control_sni))
    if not isinstance(control, _Control):
        return []
    try:
        return [await asyncio.shield(control.task)]
    except Exception as exc:  # noqa: BLE001 - the control broke: report it as a failed step
        failure, message = classify_exception(exc)
        return [SniControl(ok=False, failure=failure, error=message)]


# --- the layer -------------------------------------------------------------------------------


def budget(job: Job) -> float:
    """dns (up to three timeouts), connect (the control's beside it), the control's handshake,
    the handshake; the engine gives `diagnose` the same budget again."""
    return job.timeout * 6 + 1.0


async def open_tls(
    job: Job, ctx: Context, sample: Sample, alpn: tuple[str, ...] = (), *, verify: bool = True
) -> Wire | None:
    """dns -> tcp (beside the control's) -> tls for a target; the open Wire, or None. Without
    `verify` any certificate is taken (the caller pins what it expects)."""
    address = await resolve(job, ctx, sample)
    if address is None:
        return None
    port = target_port(job)
    control = start_control(job, ctx, address, port)
    sock = await connect(job, ctx, sample, address, port)
    if sock is None:
        return None
    try:
        await await_control(control)
    except BaseException:  # cancelled (a deadline, Ctrl-C) while the control went on
        sock.close()
        raise
    context = ctx.ssl_context(job.ca_files, alpn=alpn, verify=verify)
    return await handshake(job, ctx, sample, sock, context, target_sni(job))


async def measure(job: Job, ctx: Context) -> Sample:
    sample = Sample()
    wire = await open_tls(job, ctx, sample, tuple(job.target.alpn or ()))
    if wire is not None:
        wire.abort()  # the handshake is all tls:// asks
    return sample


LAYER = Layer(measure=measure, budget=budget, diagnose=diagnose)
