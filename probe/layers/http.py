"""The https layer: one GET over the tls layer, recording status, bytes, timings and throughput.

Strategy: the tls layer opens the connection (dns, the SNI control, tcp, the handshake, each a
phase of the sample) and hands over its `tls.Wire`, which sees raw bytes on the wire; HTTP runs
over it with the sans-I/O state machines h11 (HTTP/1.1) or h2 (HTTP/2, when ALPN selects "h2").
No HTTP client library sits in between: a client, a pool, URL and message models per sample
cost more CPU than the handshake itself, and a pool keyed by address:port rather than by SNI
would mix targets that share an address. One request per connection; redirects are not
followed (the Location host is kept: captive-portal evidence).

Timing (CENSORSHIP.md, "https / throttling"): the response must start within `job.timeout` of
the request (an idle timer on the wire until its first byte). Then the transfer is read for a
bounded window (WINDOW_FACTOR x timeout after the handshake, a deadline, not an idle timer) or up
to BYTE_CAP. When the window closes, bytes then silence for at least STALL_FACTOR x
`job.timeout` is a `stall`, with the bytes received before it; anything still moving is ok: a
slow transfer is throttling, judged from its throughput, never a timeout. Gaps are judged only
at the window's end because a policer's drops can hold TCP silent for longer than a timeout
(retransmission back-off) on a transfer that then moves on. Over HTTP/2 the response starts
with its HEADERS frame, not with the SETTINGS every h2 server sends first, so that neither
starts the transfer nor counts as its first byte (`ttfb_ms`).

Floods (issue 22): a server may keep the socket full of valid protocol that is no response:
interim responses without end, chunk extensions around 1-byte chunks, HTTP/2 SETTINGS, PING,
WINDOW_UPDATE, empty DATA or unknown frames. The Wire yields to the event loop after every read
that found data waiting, so the deadlines still fire; and a response is bounded besides its
body, so such a server is told for what it is at once, not after the window, as a
`protocol_error` worded "the server flooded: ...":
  MAX_INTERIM          interim (1xx) responses before the final one: real servers send one or
                       two (100 Continue, 103 Early Hints); 32 leaves room for a 102 Processing
                       now and then over a whole transfer window.
  MAX_CONTROL_FRAMES   HTTP/2 frames (h2 events) that bring no body byte: SETTINGS, PING,
                       WINDOW_UPDATE, PRIORITY, empty DATA, unknown types, other streams. A
                       server sends a handful (its SETTINGS, an ack, a PING or two); each costs
                       h2 5-7 us, so 1,000 cost under 10 ms of CPU.
  MAX_OVERHEAD         bytes of the response that are not body: headers (at most
                       MAX_HEADER_BYTES), chunk framing, HTTP/2 frame headers, control frames
                       and padding. 16 MiB sent in 1 KiB chunks or 16 KiB frames carries
                       100 KiB at most; 1 MiB of SETTINGS frames costs h2 about 35 ms.

Ends: a whole response closes with FIN; anything else (failed, cut short, capped, truncated,
cancelled) with RST, so the server stops sending and no state is left behind. A server that
breaks HTTP (garbage, a header bomb, a hang-up mid-response, a reset stream) is a failure fact
(failures.py maps h11's and h2's errors), never a crash.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import h11

from probe.catalog import Job
from probe.failures import (
    EOF_,
    HTTP_STATUS,
    PROTOCOL_ERROR,
    STALL,
    TIMEOUT,
    Failed,
    classify_exception,
)
from probe.layers import Context, Layer, tls
from probe.layers.tcp import elapsed_ms, target_port
from probe.layers.tls import Wire, open_tls
from probe.observations import HttpFacts, Sample

BYTE_CAP = 16 * 1024 * 1024  # stop reading a body here: enough to measure any throughput
WINDOW_FACTOR = 3  # the transfer window, in timeouts, from the end of the handshake
# Silence at the window's end that makes a stall, in timeouts: more than one, because a
# policer's drops back TCP's retransmission timer off past a timeout (lab: 2.3 s at 2 s).
STALL_FACTOR = 1.5
ALPN = ("h2", "http/1.1")

# Response headers may be this large (h11 fails beyond: a header bomb is a protocol error).
# 100 KiB, as httpx allowed: real sites send large cookies and security policies.
MAX_HEADER_BYTES = 100 * 1024
# Bounds besides the body (see the module docstring, "Floods").
MAX_INTERIM = 32
MAX_CONTROL_FRAMES = 1000
MAX_OVERHEAD = 1 << 20
_REDIRECTS = frozenset({301, 302, 303, 307, 308})  # the ones that mean "go there" (httpx's set)
# Inbound header validation off, as httpx had it: a server's sloppy header is not a block.
_H2_CONFIG = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                       validate_inbound_headers=False)
# The receive windows, stream and connection, given back as data is read: more than a fast
# path holds in flight (1 Gbit/s at 64 ms), so flow control does not limit a measured
# throughput, as h2's default 64 KiB would (64 KiB per round trip).
_H2_WINDOW = 8 * 1024 * 1024
_H2_SETTINGS = 0x4  # the frame type (RFC 9113 6.5)


def budget(job: Job) -> float:
    """dns, the control (connect + handshake), connect, handshake, then the transfer window."""
    return job.timeout * (6 + WINDOW_FACTOR) + 1.0  # one timeout spare


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _host_header(job: Job, port: int) -> str:
    host = _url_host(job.endpoint.host)
    return host if port == 443 else f"{host}:{port}"


class _Transfer:
    """What one GET has seen so far; the facts of the `http` phase come from it."""

    def __init__(self, wire: Wire, timeout: float) -> None:
        self.wire = wire
        self.ready_at = time.perf_counter()  # the handshake is done and the request goes now
        wire.idle = timeout  # until the response starts, silence longer than this fails
        self.received = 0  # decrypted bytes from the server (headers, body, h2 framing)
        self.first_byte_at: float | None = None  # perf_counter() when the response started
        self.body = 0
        self.status: int | None = None
        self.http_version: str | None = None
        self.location_host: str | None = None
        self.capped = False
        self.truncated = False
        self.whole = False  # the response ended as the server meant it to
        self.interim = 0  # 1xx responses so far
        self.control = 0  # HTTP/2 events that brought no body byte

    async def read(self) -> bytes:
        data = await self.wire.read()
        self.received += len(data)
        return data

    def started(self) -> None:
        """The response's first byte is here. From now on a gap is judged at the window's end,
        not as it happens: a policer's drops can stall TCP for longer than a timeout
        (retransmission back-off) on a transfer that then moves on. That is throttling."""
        if self.first_byte_at is None:
            self.first_byte_at = time.perf_counter()
            self.wire.idle = None

    def response(self, status: int, version: str, location: bytes | None) -> None:
        self.status, self.http_version = status, version
        if status in _REDIRECTS and location:
            self.location_host = _location_host(location)

    def interim_response(self) -> None:
        self.interim += 1
        if self.interim > MAX_INTERIM:
            raise Failed(PROTOCOL_ERROR, f"the server flooded: more than {MAX_INTERIM} "
                                         "interim (1xx) responses")

    def control_frame(self, event: h2.events.Event) -> None:
        """Count an HTTP/2 event that brought no body byte."""
        self.control += 1
        if self.control > MAX_CONTROL_FRAMES:
            kind = _H2_FRAME_NAMES.get(type(event), "other")
            raise Failed(PROTOCOL_ERROR, f"the server flooded: more than {MAX_CONTROL_FRAMES} "
                                         f"HTTP/2 frames without body bytes (the last: {kind})")

    def bounded(self) -> None:
        """After each read: fail once the bytes besides the body pass MAX_OVERHEAD."""
        overhead = self.received - self.body
        if overhead > MAX_OVERHEAD:
            raise Failed(PROTOCOL_ERROR, f"the server flooded: {overhead} bytes besides "
                                         f"{self.body} body bytes (headers, framing, control)")

    def add_body(self, size: int) -> bool:
        """Count body bytes; True once BYTE_CAP is reached (stop reading)."""
        self.body += size
        if self.body >= BYTE_CAP:
            self.capped = True
            return True
        return False


# What a flood of HTTP/2 events was made of, in the frames' own names (for `detail`).
_H2_FRAME_NAMES: dict[type[h2.events.Event], str] = {
    h2.events.RemoteSettingsChanged: "SETTINGS",
    h2.events.SettingsAcknowledged: "SETTINGS ack",
    h2.events.PingReceived: "PING",
    h2.events.PingAckReceived: "PING ack",
    h2.events.WindowUpdated: "WINDOW_UPDATE",
    h2.events.PriorityUpdated: "PRIORITY",
    h2.events.DataReceived: "empty DATA",
    h2.events.UnknownFrameReceived: "unknown type",
    h2.events.InformationalResponseReceived: "1xx HEADERS",
}


def _location_host(location: bytes) -> str | None:
    try:
        return urlsplit(location.decode("utf-8", "replace")).hostname
    except ValueError:  # "http://[junk": no host to keep, and no reason to fail the response
        return None


@functools.lru_cache(maxsize=256)
def _h1_request(path: str, host: str) -> h11.Request:
    # Immutable, and its validation is a fifth of h11's cost per GET: one per target, not
    # per sample.
    return h11.Request(method="GET", target=path, headers=[
        ("host", host), ("user-agent", "probe"), ("accept", "*/*"),
        ("accept-encoding", "identity"),
    ])


async def _http1(job: Job, port: int, t: _Transfer) -> None:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
    request = _h1_request(job.endpoint.path, _host_header(job, port))
    await t.wire.write(conn.send(request) + conn.send(h11.EndOfMessage()))
    while True:
        data = await t.read()
        if data:
            t.started()
        conn.receive_data(data)  # b"": the server closed (h11 judges if that ends the body)
        while True:
            event = conn.next_event()  # raises h11.RemoteProtocolError on garbage or a hang-up
            if event is h11.NEED_DATA:
                break
            if event is h11.PAUSED:  # a protocol switch we never asked for: nothing more to read
                raise Failed(PROTOCOL_ERROR, "the server switched protocols")
            if type(event) is h11.Data:
                if t.add_body(len(event.data)):
                    return
            elif type(event) is h11.Response:
                location = next((v for k, v in event.headers if k == b"location"), None)
                t.response(event.status_code, f"HTTP/{event.http_version.decode()}", location)
            elif type(event) is h11.EndOfMessage:
                t.whole = True
                return
            elif type(event) is h11.ConnectionClosed:  # closed before a response started
                raise Failed(EOF_, "server closed the connection without sending a response")
            elif type(event) is h11.InformationalResponse:  # 1xx: the real response follows
                t.interim_response()
        t.bounded()


async def _http2(job: Job, port: int, t: _Transfer) -> None:
    conn = h2.connection.H2Connection(config=_H2_CONFIG)
    # Set before the preface so it carries them (as httpx did: no push, header lists <= 64 KiB),
    # without ENABLE_CONNECT_PROTOCOL, which some servers balk at in the first SETTINGS.
    conn.local_settings = h2.settings.Settings(client=True, initial_values={
        h2.settings.SettingCodes.ENABLE_PUSH: 0,
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
        h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _H2_WINDOW,
    })
    del conn.local_settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL]
    conn.initiate_connection()
    conn.increment_flow_control_window(_H2_WINDOW)
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, [
        (":method", "GET"), (":scheme", "https"), (":authority", _host_header(job, port)),
        (":path", job.endpoint.path), ("user-agent", "probe"), ("accept", "*/*"),
        ("accept-encoding", "identity"),
    ], end_stream=True)
    await t.wire.write(conn.data_to_send())
    first = b""  # the server's first bytes, until they show the frame type
    while True:
        data = await t.read()
        if not data:
            raise Failed(EOF_, "server closed the connection before a complete response")
        if len(first) < 4:
            # An HTTP/2 server starts with a SETTINGS frame (RFC 9113 3.4). Judge that from the
            # frame header: h2 would wait for the whole frame, whose length a non-HTTP/2 reply
            # makes up ("HTTP/1.1 " reads as 4.7 MB), until the window closes.
            first += data[:4]
            if len(first) >= 4 and first[3] != _H2_SETTINGS:
                raise Failed(PROTOCOL_ERROR, f"no HTTP/2 from the server, which began "
                                             f"{(first + data[4:16])[:16]!r}")
        for event in conn.receive_data(data):  # raises h2's ProtocolError on garbage
            if _h2_event(event, stream, conn, t):
                return
            if type(event) is not h2.events.DataReceived or not event.data:
                t.control_frame(event)
        t.bounded()
        if out := conn.data_to_send():  # SETTINGS ack, WINDOW_UPDATE, PING ack
            await t.wire.write(out)


def _h2_event(event: h2.events.Event, stream: int, conn: h2.connection.H2Connection,
              t: _Transfer) -> bool:
    """Take one HTTP/2 event; True when the transfer is over (whole or capped)."""
    if isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
        # Give the window back as we go, or the server stops at the window's end.
        conn.acknowledge_received_data(event.flow_controlled_length or 0, stream)
        return t.add_body(len(event.data or b""))
    if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
        t.started()
        headers: dict[Any, Any] = dict(event.headers or ())
        try:
            status = int(headers.get(b":status", b""))
        except ValueError:
            raise Failed(PROTOCOL_ERROR, f"bad :status {headers.get(b':status')!r}") from None
        t.response(status, "HTTP/2", headers.get(b"location"))
    elif isinstance(event, h2.events.InformationalResponseReceived) and event.stream_id == stream:
        t.started()
        t.interim_response()
    elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
        t.whole = True
        return True
    elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
        raise Failed(PROTOCOL_ERROR, f"server reset the stream ({_h2_code(event.error_code)})")
    elif isinstance(event, h2.events.ConnectionTerminated) and (
            event.error_code != h2.errors.ErrorCodes.NO_ERROR
            or (event.last_stream_id or 0) < stream):
        # A graceful GOAWAY that still covers our stream lets it finish; anything else ends it.
        raise Failed(PROTOCOL_ERROR, f"server ended the connection (GOAWAY "
                                     f"{_h2_code(event.error_code)})")
    return False


def _h2_code(code: Any) -> str:
    return code.name if isinstance(code, h2.errors.ErrorCodes) else str(code)


async def measure(job: Job, ctx: Context) -> Sample:
    sample = Sample()
    wire = await open_tls(job, ctx, sample, ALPN)  # records dns, tcp and tls; None if one failed
    if wire is None:
        return sample
    transfer = _Transfer(wire, job.timeout)
    try:
        await _get(job, transfer, sample)
    finally:
        http = sample.get(HttpFacts)
        if transfer.whole and http is not None and http.ok and not http.truncated:
            wire.close()  # FIN: the response ended as meant
        else:  # failed, cut short, capped, truncated or cancelled
            wire.abort()  # RST: stop the server sending, leave no state behind
    return sample


async def _get(job: Job, t: _Transfer, sample: Sample) -> None:
    assert t.wire.tls is not None
    exchange = _http2 if t.wire.tls.selected_alpn_protocol() == "h2" else _http1
    window = job.timeout * WINDOW_FACTOR
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(loop.time() + window) as deadline:
            await exchange(job, target_port(job), t)
        if t.status is None:  # an HTTP/2 stream ended (or data came) with no :status
            raise Failed(PROTOCOL_ERROR, "response without a status")
    except TimeoutError:
        if not deadline.expired():  # the wire was silent for a whole timeout before a response
            _fail(sample, t, Failed(TIMEOUT, f"no response within {job.timeout:g} s of the "
                                             "request"))
            return
        silent_for = time.perf_counter() - t.wire.last_raw_at
        if t.first_byte_at is not None and silent_for >= STALL_FACTOR * job.timeout:
            _fail(sample, t, Failed(STALL, f"transfer stalled: {t.body} body bytes, then "
                                           f"nothing for {silent_for:.1f} s"))
            return
        if t.status is None:
            _fail(sample, t, Failed(TIMEOUT, f"no complete response headers within the "
                                             f"{window:g} s window ({t.received} bytes)"))
            return
        t.truncated = True  # still moving when the window closed: slow, not failed
    except Exception as exc:  # noqa: BLE001 - reset, closed mid-body, garbage: a fact, not a crash
        _fail(sample, t, exc)
        return
    assert t.status is not None
    if t.status >= 400:
        sample.add(_facts(t, HTTP_STATUS, f"HTTP {t.status}"))
    else:
        sample.add(_facts(t))


def _facts(t: _Transfer, failure: str | None = None, error: str | None = None) -> HttpFacts:
    """The http facts; times run from the request (sent as soon as the handshake is done)."""
    seconds = time.perf_counter() - t.ready_at
    moved = t.body > 0
    return HttpFacts(
        ok=failure is None, ms=elapsed_ms(t.ready_at), failure=failure, error=error,
        status=t.status, http_version=t.http_version, location_host=t.location_host,
        bytes=t.body,
        ttfb_ms=None if t.first_byte_at is None else round((t.first_byte_at - t.ready_at) * 1000,
                                                           3),
        transfer_ms=round(seconds * 1000, 3) if moved else None,
        throughput=round(t.body * 8 / seconds) if moved and seconds > 0 else None,
        capped=t.capped or None, truncated=t.truncated or None,
    )


def _fail(sample: Sample, t: _Transfer, exc: BaseException) -> None:
    sample.add(_facts(t, *classify_exception(exc)))


LAYER = Layer(measure=measure, budget=budget, diagnose=tls.diagnose)
