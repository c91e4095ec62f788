"""The quic layer: a QUIC handshake over UDP (`quic://HOST[:PORT]`), and a version ping after timeouts.

Strategy: aioquic's sans-I/O `QuicConnection`, driven by a small DatagramProtocol on a connected
UDP socket of the address's own family (`layers/udp.py`). aioquic's stock `connect()` is not used:
it reports every failure as a bare ConnectionError, binds an IPv6 socket that fails where IPv6 is
off, and only reports a close after the closing period (3 PTO, 100-600 ms). Here every datagram is
fed to the core and the outcome read at once: HandshakeCompleted, a CONNECTION_CLOSE from the peer,
one our own stack is about to send (certificate verification failed), or an ICMP port unreachable
on the socket. Only silence waits for the whole timeout.

When every sample timed out, `diagnose` sends a reserved-version ping (probe.wire.quic) to the
same address: a Version Negotiation reply proves QUIC packets get through when they carry no
ClientHello, which points at SNI-keyed blocking (CENSORSHIP.md: China 2024).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import ssl
import time
from pathlib import Path
from typing import Any, cast

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted
from aioquic.quic.packet import QuicErrorCode
from aioquic.tls import AlertDescription

from probe import failures as F
from probe.catalog import Job
from probe.layers import Context, Layer
from probe.layers.dns import resolve
from probe.layers.udp import open_udp
from probe.observations import (
    DnsFacts,
    Facts,
    Observation,
    QuicControl,
    QuicFacts,
    Sample,
    VersionPing,
)
from probe.wire.quic import (
    LongHeader,
    QuicCodecError,
    decode_version_negotiation,
    encode_version_ping,
    new_version_ping,
)

DEFAULT_ALPN = ("h3",)
# Seconds a sample waits for the control handshake to the same address before its own Initial:
# a handshake takes a round trip or two, even over a satellite.
CONTROL_HEAD_START = 2.0

# aioquic logs every close it sends as a warning; without a handler of the program's own,
# Python's last-resort handler would print those to stderr over the progress display.
logging.getLogger("quic").addHandler(logging.NullHandler())
_PING_SENDS = 3  # the version ping is sent this many times, spread over the timeout (loss)


def budget(job: Job) -> float:
    """The engine's deadline for one sample: a dns lookup, the control handshake (first sample
    to an address only) and the handshake, each up to `job.timeout`, plus a second of slack
    (the diagnosis ping fits the same bound)."""
    return job.timeout * 3 + 1.0


async def measure(job: Job, ctx: Context) -> Sample:
    sample = Sample()
    address = await resolve(job, ctx, sample)
    if address is None:
        return sample
    port = job.endpoint.port or 443
    await take_control(job, ctx, address, port)
    sample.add(await handshake(job, ctx, address, port))
    return sample


async def handshake(job: Job, ctx: Context, address: str, port: int,
                    sni: str | None = None) -> QuicFacts:
    """One QUIC handshake to address:port (with `sni`: that name, the certificate unchecked);
    every outcome is a fact, never an exception."""
    start = time.perf_counter()
    try:
        configuration = _configuration(job, ctx, sni)
    except OSError as exc:  # an unreadable ca_file: nothing was sent
        return QuicFacts(ok=False, failure=F.UNKNOWN, error=f"cannot read a ca_file: {exc}")
    remote = (address, port)
    try:
        transport, attempt = open_udp(
            lambda: _Handshake(QuicConnection(configuration=configuration), remote, job.timeout),
            address, port)
    except OSError as exc:
        failure, message = F.classify_udp_error(exc)
        return QuicFacts(ok=False, ms=_ms_since(start), failure=failure, error=message)
    try:
        async with asyncio.timeout(job.timeout):
            await attempt.done
    except TimeoutError:
        attempt.time_out(job.timeout)
    finally:
        attempt.stop()
        transport.close()
    return attempt.facts()


# --- the control: the same address with a harmless name, before the samples -------------------


def _control_key(address: str, port: int, sni: str) -> str:
    return f"quic.control {address} {port} {sni}"


async def _control(job: Job, ctx: Context, address: str, port: int, sni: str) -> QuicControl:
    facts = await handshake(job, ctx, address, port, sni)
    return QuicControl(**facts.model_dump(exclude_none=True), sni=sni, before_samples=True)


class _ControlTask:
    """One control handshake per address:port and run, shared by every target there."""

    def __init__(self, task: asyncio.Task[QuicControl]) -> None:
        self.task = task

    async def aclose(self) -> None:  # called by Context.aclose() at the end of the run
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task


async def take_control(job: Job, ctx: Context, address: str, port: int) -> None:
    """Take the control handshake to address:port now, once per run, before the sample's
    Initial: a residual block this target's name triggers must not spoil it. Not for a control
    of the network: it asks whether QUIC works at all, not which name is filtered."""
    sni = ctx.control_sni
    if job.is_control or sni == (job.target.sni or job.endpoint.host):
        return
    key = _control_key(address, port, sni)
    control = ctx.cache.get(key)
    if not isinstance(control, _ControlTask):
        control = ctx.cache[key] = _ControlTask(
            asyncio.ensure_future(_control(job, ctx, address, port, sni)))
    if not control.task.done():
        # Waited on, not cancelled by a sample's deadline (other targets share the control);
        # for at most a head start: a control still unanswered by then is on a path that drops
        # QUIC, and the sample need not spend a second timeout behind it.
        await asyncio.wait({control.task}, timeout=min(job.timeout, CONTROL_HEAD_START))


class _Handshake(asyncio.DatagramProtocol):
    """Feeds datagrams and timers to the aioquic core and notes what happened, when."""

    def __init__(self, connection: QuicConnection, remote: tuple[str, int], timeout: float) -> None:
        self.connection = connection
        self.remote = remote
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.transport: asyncio.DatagramTransport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.started = self.loop.time()
        self.ended: float | None = None
        self.first_datagram: float | None = None
        self.first_packet: float | None = None
        self.completed: float | None = None
        self.datagrams = 0
        self.failure: str | None = None
        self.error: str | None = None
        self.alpn: str | None = None
        self.version: str | None = None
        self.closed_by: str | None = None
        self.error_code: int | None = None
        self.error_name: str | None = None
        self.reason: str | None = None
        self.frame_type: int | None = None
        self.alpn_refused: bool | None = None

    # --- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.started = self.loop.time()
        try:
            self.connection.connect(self.remote, now=self.started)
            self._after_io()
        except OSError as exc:  # sendto on the fresh socket: no route, no such family...
            self._fail(*F.classify_udp_error(exc))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.done.done():
            return
        now = self.loop.time()
        self.datagrams += 1
        if self.first_datagram is None:
            self.first_datagram = now
        try:
            # The socket is connected, so every datagram is from the peer; aioquic wants the
            # address it connected to, not the kernel's (possibly longer) IPv6 tuple.
            self.connection.receive_datagram(data, self.remote, now=now)
        except Exception as exc:  # noqa: BLE001 - aioquic handles hostile bytes; be sure anyway
            self._fail(F.PROTOCOL_ERROR, f"aioquic rejected a datagram: {type(exc).__name__}")
            return
        if self.first_packet is None and _accepted_a_packet(self.connection):
            self.first_packet = now
        self._after_io()

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self._fail(*F.classify_udp_error(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self._fail(*(F.classify_udp_error(exc) if exc else (F.EOF_, "socket closed")))

    def _on_timer(self) -> None:
        self.timer = None
        if self.done.done():
            return
        pending = _pending_close(self.connection)
        self.connection.handle_timer(now=self.loop.time())
        if pending is None and _pending_close(self.connection) is not None:
            # Only a timer of our own ended it: the idle timeout (or no viable path). That is
            # silence, not a close; report it as the timeout it is.
            self.time_out(self.timeout)
            return
        self._after_io()

    # --- the core ----------------------------------------------------------------------------

    def _after_io(self) -> None:
        while (event := self.connection.next_event()) is not None:
            if isinstance(event, HandshakeCompleted) and self.completed is None:
                self.completed = self.loop.time()
                self.alpn = event.alpn_protocol
                self.version = _hex(getattr(self.connection, "_version", None))
                # Say goodbye at once, so the server frees its state (its closing period is
                # its own business; we do not wait for it).
                self.connection.close(error_code=QuicErrorCode.NO_ERROR)
            elif isinstance(event, ConnectionTerminated) and self.completed is None:
                self._closed(event.error_code, event.frame_type, event.reason_phrase)
        if self.completed is None and not self.done.done():
            close = _pending_close(self.connection)
            if close is not None:
                self._closed(close.error_code, close.frame_type, close.reason_phrase)
        self._transmit()
        if self.completed is not None and not self.done.done():
            self.ended = self.completed
            self.done.set_result(None)
        if not self.done.done():
            self._arm_timer()

    def _closed(self, error_code: int, frame_type: int | None, reason: str) -> None:
        """A CONNECTION_CLOSE, received or about to be sent: record it and end the attempt."""
        if self.done.done():
            return
        by_peer = _state(self.connection) == QuicConnectionState.DRAINING
        if by_peer and self.first_packet is None:
            # aioquic stops before counting a packet that closes; decrypting it is the proof.
            self.first_packet = self.loop.time()
        failure = F.quic_close_fact(error_code, reason, by_peer=by_peer)
        self.closed_by = "peer" if by_peer else "local"
        self.error_code, self.error_name = error_code, _error_name(error_code)
        self.reason, self.frame_type = reason, frame_type
        who = "server" if by_peer else "our QUIC stack"
        words = f"{who} closed with {_error_name(error_code)} (0x{error_code:x})"
        if failure == F.ALPN_REFUSED:
            self.alpn_refused = True
            offered = "/".join(self.connection.configuration.alpn_protocols or [])
            words = f"server refused ALPN {offered}: " + words
        elif failure in (F.UNTRUSTED_CERTIFICATE, F.HOSTNAME_MISMATCH):
            words = "certificate rejected: " + words
        self._fail(failure, f"{words}: {reason}" if reason else words)

    def _fail(self, failure: str, error: str) -> None:
        if self.done.done():
            return
        self.failure, self.error = failure, error
        self.ended = self.loop.time()
        self._transmit()  # our own CONNECTION_CLOSE, if the core has one queued
        self.done.set_result(None)

    def time_out(self, timeout: float) -> None:
        """No result within the timeout: say how far the handshake got."""
        if self.failure is not None or self.completed is not None:
            return
        self.failure, self.ended = F.TIMEOUT, self.loop.time()
        if self.datagrams == 0:
            self.error = f"no server packet within {timeout:.1f} s after the Initial"
        elif self.first_packet is None:
            self.error = (f"{self.datagrams} datagram(s) came back within {timeout:.1f} s, "
                          "none a valid QUIC packet for this connection")
        else:
            self.error = f"server answered, but the handshake did not complete in {timeout:.1f} s"
        if not self.done.done():
            self.done.set_result(None)

    def _transmit(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        for data, _ in self.connection.datagrams_to_send(now=self.loop.time()):
            self.transport.sendto(data)

    def _arm_timer(self) -> None:
        timer_at = self.connection.get_timer()
        if self.timer is not None and (timer_at is None or self.timer.when() != timer_at):
            self.timer.cancel()
            self.timer = None
        if timer_at is not None and self.timer is None:
            self.timer = self.loop.call_at(timer_at, self._on_timer)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.done.done():
            self.done.cancel()

    def facts(self) -> QuicFacts:
        """What happened, as the `quic` facts."""
        ended = self.ended if self.ended is not None else self.loop.time()
        completed = self.completed is not None
        return QuicFacts(
            ok=completed,
            ms=_ms((self.completed if self.completed is not None else ended) - self.started),
            failure=None if completed else self.failure or F.UNKNOWN,
            error=None if completed else self.error,
            server_packet=self.first_packet is not None, datagrams=self.datagrams,
            ms_first_packet=None if self.first_packet is None else _ms(
                self.first_packet - self.started),
            alpn=self.alpn, version=self.version, closed_by=self.closed_by,
            error_code=self.error_code, error_name=self.error_name, reason=self.reason,
            frame_type=self.frame_type, alpn_refused=self.alpn_refused,
        )


# --- aioquic internals, in one place -----------------------------------------------------------
# aioquic queues ConnectionTerminated only at the end of the closing period; the close itself
# is known at once, in `_close_event`. Reading it is what makes a close prompt.


def _pending_close(connection: QuicConnection) -> ConnectionTerminated | None:
    close = getattr(connection, "_close_event", None)
    return close if isinstance(close, ConnectionTerminated) else None


def _state(connection: QuicConnection) -> QuicConnectionState | None:
    return getattr(connection, "_state", None)


def _accepted_a_packet(connection: QuicConnection) -> bool:
    """True once the core has decrypted a packet from the server (junk never gets there)."""
    spaces = getattr(connection, "_spaces", {})
    return any(space.largest_received_packet >= 0 for space in spaces.values())


def _error_name(error_code: int) -> str:
    if 0x100 <= error_code <= 0x1FF:
        try:
            return f"CRYPTO_ERROR {AlertDescription(error_code - 0x100).name}"
        except ValueError:
            return f"CRYPTO_ERROR alert {error_code - 0x100}"
    try:
        return QuicErrorCode(error_code).name
    except ValueError:
        return "error"


# --- configuration -----------------------------------------------------------------------------


def _configuration(job: Job, ctx: Context, sni: str | None = None) -> QuicConfiguration:
    """Client settings; trust is the tls layer's: the system store plus the job's ca_files.
    With `sni` (the control's harmless name) nothing is verified: reaching the server is the
    fact that counts, and no certificate is valid for that name there."""
    if sni is not None:
        return QuicConfiguration(is_client=True, server_name=sni, verify_mode=ssl.CERT_NONE,
                                 alpn_protocols=list(job.target.alpn or DEFAULT_ALPN),
                                 idle_timeout=job.timeout)
    cafile, capath = _system_trust()
    return QuicConfiguration(
        is_client=True,
        server_name=job.target.sni or job.endpoint.host,
        alpn_protocols=list(job.target.alpn or DEFAULT_ALPN),
        idle_timeout=job.timeout,
        cafile=cafile,
        capath=capath,
        cadata=_extra_trust(job.ca_files, ctx),
    )


_HASHED_NAME = re.compile(r"^[0-9a-f]{8}\.\d+$")


@functools.cache
def _system_trust() -> tuple[str | None, str | None]:
    """(cafile, capath) of the system store. A hashed certificate folder is preferred: OpenSSL
    looks a root up there by name, where a bundle file is parsed whole on every handshake."""
    paths = ssl.get_default_verify_paths()
    capath = paths.capath
    if capath and os.path.isdir(capath) and any(_HASHED_NAME.match(n) for n in os.listdir(capath)):
        return None, capath
    if paths.cafile and os.path.isfile(paths.cafile):
        return paths.cafile, None
    return None, None  # aioquic then falls back to certifi's bundle


def _extra_trust(ca_files: tuple[str, ...], ctx: Context) -> bytes | None:
    if not ca_files:
        return None
    cache: dict[tuple[str, ...], bytes] = ctx.cache.setdefault("quic.cadata", {})
    if ca_files not in cache:
        cache[ca_files] = b"\n".join(Path(path).read_bytes() for path in ca_files)
    return cache[ca_files]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _ms_since(start: float) -> float:
    return _ms(time.perf_counter() - start)


def _hex(version: int | None) -> str | None:
    return None if version is None else f"0x{version:08x}"


# --- diagnosis: the version-negotiation ping ---------------------------------------------------


async def diagnose(job: Job, ctx: Context, observation: Observation) -> list[Facts]:
    """After every sample timed out in the quic layer: the control handshake with a harmless
    name (taken before the samples), and whether QUIC without a ClientHello is answered."""
    failed = [sample.failed for sample in observation.samples]
    if not failed or any(f is None or not isinstance(f[1], QuicFacts)
                         or f[1].failure != F.TIMEOUT for f in failed):
        return []
    address = job.target.address or (job.endpoint.host if job.endpoint.is_ip else
                                      _address(observation))
    if address is None:
        return []
    port = job.endpoint.port or 443
    steps: list[Facts] = []
    sni = ctx.control_sni
    control = ctx.cache.get(_control_key(address, port, sni))
    if isinstance(control, _ControlTask):
        try:
            steps.append(await asyncio.shield(control.task))
        except Exception as exc:  # noqa: BLE001 - the control broke: report it as a failed step
            failure, message = F.classify_exception(exc)
            steps.append(QuicControl(ok=False, failure=failure, error=message, sni=sni))
    steps.append(await version_ping(address, port, job.timeout))
    return steps


def _address(observation: Observation) -> str | None:
    """The address the samples used: from their dns phase (None: they never resolved it)."""
    for sample in observation.samples:
        dns = sample.get(DnsFacts)
        if dns is not None and dns.ok and dns.answers:
            return dns.answers[0]
    return None


async def version_ping(address: str, port: int, timeout: float) -> VersionPing:
    """Send a reserved-version ping (resent a few times within `timeout`) and wait for a
    Version Negotiation that echoes its CIDs."""
    ping = new_version_ping()
    start = time.perf_counter()
    try:
        transport, listener = open_udp(lambda: _PingListener(ping), address, port)
    except OSError as exc:
        failure, message = F.classify_udp_error(exc)
        return VersionPing(ok=False, ms=_ms_since(start), failure=failure, error=message)
    packet = encode_version_ping(ping)
    try:
        async with asyncio.timeout(timeout):
            for _ in range(_PING_SENDS):
                transport.sendto(packet)
                try:
                    async with asyncio.timeout(timeout / _PING_SENDS):
                        await asyncio.shield(listener.done)
                    break
                except TimeoutError:
                    continue
            await listener.done
    except TimeoutError:
        pass
    finally:
        transport.close()
        if not listener.done.done():
            listener.done.cancel()
    sent = _hex(ping.version)
    if listener.versions is not None:
        return VersionPing(ok=True, ms=_ms(listener.answered_after), version_sent=sent,
                           datagrams=listener.datagrams, versions=listener.versions)
    failure, message = listener.failure or (
        F.TIMEOUT, f"no Version Negotiation within {timeout:.1f} s")
    return VersionPing(ok=False, ms=_ms_since(start), failure=failure, error=message,
                       version_sent=sent, datagrams=listener.datagrams)


class _PingListener(asyncio.DatagramProtocol):
    def __init__(self, ping: LongHeader) -> None:
        self.ping = ping
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.datagrams = 0
        self.versions: list[str] | None = None
        self.answered_after = 0.0
        self.failure: tuple[str, str] | None = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams += 1
        if self.done.done():
            return
        try:
            reply = decode_version_negotiation(data)
        except QuicCodecError:
            return  # not an answer to us: keep listening
        if reply.answers(self.ping):
            self.versions = [v for v in map(_hex, reply.versions) if v is not None]
            self.answered_after = self.loop.time() - self.started
            self.done.set_result(None)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.failure = F.classify_udp_error(exc)
            self.done.set_result(None)


LAYER = Layer(measure=measure, budget=budget, diagnose=diagnose)
