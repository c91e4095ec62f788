"""The https layer: one GET over the tls layer, recording status, bytes, timings and throughput.

Strategy: httpx (HTTP/1.1 and HTTP/2) runs on a network backend of our own, so its TCP connect
and TLS handshake are the tcp and tls layers' steps, recorded as phases of the sample, and the
body arrives through `tls.Wire`, which sees raw bytes on the wire. A client is made per sample,
on the run's cached SSL context: httpx pools connections by origin (address:port), not by SNI,
and an HTTP/2 connection still being set up takes other requests to that origin, so a shared
client would mix targets that share an address and skip the tcp and tls phases.

Timing (CENSORSHIP.md, "https / throttling"): the response must start within `job.timeout` of
the request. Then the transfer is read for a bounded window (WINDOW_FACTOR x timeout after the
handshake, a deadline, not an idle timer) or up to BYTE_CAP. When the window closes, bytes then
silence for at least STALL_FACTOR x `job.timeout` is a `stall`, with the bytes received before it; anything
still moving is ok: a slow transfer is throttling, judged from its throughput, never a timeout.
Gaps are judged only at the window's end because a policer's drops can hold TCP silent for
longer than a timeout (retransmission back-off) on a transfer that then moves on. Redirects are not followed; the Location host is kept (captive-portal evidence).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from probe.catalog import Job
from probe.failures import HTTP_STATUS, STALL, TIMEOUT, Failed, classify_exception
from probe.layers import Context
from probe.layers.dns import resolve
from probe.layers.tcp import connect, elapsed_ms, target_port
from probe.layers.tls import Wire, diagnose, handshake, take_control, target_sni
from probe.observations import Phase, Sample

__all__ = ["BYTE_CAP", "WINDOW_FACTOR", "budget", "diagnose", "measure"]

BYTE_CAP = 16 * 1024 * 1024  # stop reading a body here: enough to measure any throughput
WINDOW_FACTOR = 3  # the transfer window, in timeouts, from the end of the handshake
# Silence at the window's end that makes a stall, in timeouts: more than one, because a
# policer's drops back TCP's retransmission timer off past a timeout (lab: 2.3 s at 2 s).
STALL_FACTOR = 1.5
ALPN = ("h2", "http/1.1")


class _Recorded(Exception):
    """The tcp or tls step failed and its phase is already in the sample."""


class _Stream(httpcore.AsyncNetworkStream):
    """httpcore's view of a `Wire`."""

    def __init__(self, backend: _Backend, wire: Wire) -> None:
        self.backend, self.wire = backend, wire

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = await self.wire.read(max_bytes)
        if data and self.backend.first_byte_at is None:
            self.backend.first_byte_at = time.perf_counter()
            # Once the response flows, a gap is judged at the window's end, not as it happens:
            # a policer's drops can stall TCP for longer than a timeout (retransmission
            # back-off) on a transfer that then moves on. That is throttling, not a stall.
            self.wire.idle = None
        self.backend.response_bytes += len(data)
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if self.wire.closed:
            raise ConnectionResetError("connection aborted")
        await self.wire.write(buffer)

    async def aclose(self) -> None:
        self.wire.close()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        b = self.backend
        wire = await handshake(b.job, b.ctx, b.sample, self.wire.sock, ssl_context,
                               server_hostname or target_sni(b.job))
        if wire is None:
            raise _Recorded
        b.wire = wire
        b.ready()
        return _Stream(b, wire)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self.wire.tls
        if info == "socket":
            return self.wire.sock
        return None  # "is_readable" too: connections are never reused, so never asked usefully


class _Backend(httpcore.AsyncNetworkBackend):
    """Connects every request to the target's resolved address through the tcp layer."""

    def __init__(self, job: Job, ctx: Context, sample: Sample, address: str) -> None:
        self.job, self.ctx, self.sample, self.address = job, ctx, sample, address
        self.wire: Wire | None = None
        self.ready_at: float | None = None  # perf_counter() when the handshake completed
        self.response_bytes = 0  # decrypted bytes of the response (headers and body)
        self.first_byte_at: float | None = None  # perf_counter() of its first byte
        self.on_ready: Callable[[], None] = lambda: None

    def ready(self) -> None:
        assert self.wire is not None
        self.ready_at = time.perf_counter()
        self.wire.idle = self.job.timeout  # from now on, silence longer than this fails
        self.on_ready()

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        sock = await connect(self.job, self.ctx, self.sample, self.address, port)
        if sock is None:
            raise _Recorded
        self.wire = Wire(sock)
        return _Stream(self, self.wire)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise NotImplementedError

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _Transport(httpx.AsyncHTTPTransport):
    def __init__(self, context: ssl.SSLContext, backend: _Backend) -> None:
        super().__init__(verify=context, http2=True, trust_env=False)
        # httpx takes no network backend: give it a pool of its own kind that uses ours.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context, http2=True, max_keepalive_connections=0, retries=0,
            network_backend=backend,
        )


def budget(job: Job) -> float:
    """dns, the control (connect + handshake), connect, handshake, then the transfer window."""
    return job.timeout * (6 + WINDOW_FACTOR) + 1.0  # one timeout spare


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _host_header(job: Job, port: int) -> str:
    host = _url_host(job.endpoint.host)
    return host if port == 443 else f"{host}:{port}"


async def measure(job: Job, ctx: Context) -> Sample:
    sample = Sample()
    address = await resolve(job, ctx, sample)
    if address is None:
        return sample
    port = target_port(job)
    await take_control(job, ctx, address, port)
    backend = _Backend(job, ctx, sample, address)
    transport = _Transport(ctx.ssl_context(job.ca_files, alpn=ALPN), backend)
    client = httpx.AsyncClient(transport=transport, trust_env=False, timeout=None,
                               follow_redirects=False)
    request = client.build_request(
        "GET", f"https://{_url_host(address)}:{port}{job.endpoint.path}",
        headers={"host": _host_header(job, port), "user-agent": "probe",
                 "accept-encoding": "identity"},
        extensions={"sni_hostname": target_sni(job)},
    )
    try:
        await _get(job, client, request, backend, sample)
    finally:
        http = sample.phases.get("http")
        whole = http is not None and http.ok and not (http.get("truncated") or http.get("capped"))
        if not whole and backend.wire is not None:  # failed, cut short or cancelled
            backend.wire.abort()  # RST: stop the server sending, leave no state behind
        with contextlib.suppress(Exception):
            await client.aclose()
    return sample


async def _get(job: Job, client: httpx.AsyncClient, request: httpx.Request, backend: _Backend,
               sample: Sample) -> None:
    facts: dict[str, Any] = {}
    body = 0
    response: httpx.Response | None = None
    loop = asyncio.get_running_loop()
    window = job.timeout * WINDOW_FACTOR
    try:
        async with asyncio.timeout(None) as deadline:
            # tcp and tls bound themselves; the window starts when the handshake is done
            backend.on_ready = lambda: deadline.reschedule(loop.time() + window)
            response = await client.send(request, stream=True)
            facts.update(status=response.status_code, http_version=response.http_version)
            location = response.headers.get("location")
            if response.is_redirect and location:
                facts["location_host"] = urlsplit(location).hostname
            async for chunk in response.aiter_raw():
                body += len(chunk)
                if body >= BYTE_CAP:
                    facts["capped"] = True
                    break
            await response.aclose()
    except _Recorded:
        return
    except TimeoutError:
        if not deadline.expired():  # the wire was silent for a whole timeout before a response
            _fail(sample, backend, facts, body, Failed(
                TIMEOUT, f"no response within {job.timeout:g} s of the request"))
            return
        silent_for = time.perf_counter() - (backend.wire.last_raw_at if backend.wire else 0)
        if backend.response_bytes and silent_for >= STALL_FACTOR * job.timeout:
            _fail(sample, backend, facts, body, Failed(
                STALL, f"transfer stalled: {body} body bytes, then nothing for "
                f"{silent_for:.1f} s"))
            return
        if response is None:
            _fail(sample, backend, facts, body, Failed(
                TIMEOUT, f"no complete response headers within the {window:g} s window "
                f"({backend.response_bytes} bytes)"))
            return
        facts["truncated"] = True  # still moving when the window closed: slow, not failed
    except Exception as exc:  # noqa: BLE001 - reset, closed mid-body, garbage: a fact, not a crash
        _fail(sample, backend, facts, body, exc)
        return
    phase = _phase(backend, facts, body)
    if response.status_code >= 400:
        phase.ok, phase.failure, phase.error = False, HTTP_STATUS, f"HTTP {response.status_code}"
    sample.add("http", phase)


def _phase(backend: _Backend, facts: dict[str, Any], body: int) -> Phase:
    """The http phase; times run from the request (sent as soon as the handshake is done)."""
    now = time.perf_counter()
    start = backend.ready_at or now
    timing: dict[str, Any] = {"bytes": body}
    if backend.first_byte_at is not None:
        timing["ttfb_ms"] = round((backend.first_byte_at - start) * 1000, 3)
    if body:
        seconds = now - start
        timing["transfer_ms"] = round(seconds * 1000, 3)
        timing["throughput"] = round(body * 8 / seconds) if seconds > 0 else None
    return Phase(ok=True, ms=elapsed_ms(start), **timing, **facts)


def _fail(sample: Sample, backend: _Backend, facts: dict[str, Any], body: int,
          exc: BaseException) -> None:
    failure, message = classify_exception(exc)
    phase = _phase(backend, facts, body)
    phase.ok, phase.failure, phase.error = False, failure, message
    sample.add("http", phase)
