"""The https layer's own HTTP (h11 / h2 over tls.Wire) against scripted loopback servers:
large HTTP/2 bodies, broken servers as failure facts, and how each connection ends (FIN or RST)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from probe.catalog import Job, LoadedCatalog, Settings
from probe.layers import Context, http
from probe.mock.certs import TestCA
from probe.mock.tls import ServerTLS, TLSServer
from probe.observations import HttpFacts

NAME = "mock.test"
Script = Callable[[ServerTLS], Awaitable[None]]
JobFor = Callable[[int], tuple[Job, Settings]]  # a job (and its settings) for the server's port


class ScriptedServer(TLSServer):
    """A TLS server whose answer after the handshake is a test's coroutine; it records how the
    client ended each connection: "fin" (an orderly close) or "rst" (a reset)."""

    def __init__(self, script: Script, *, ca: TestCA, alpn: tuple[str, ...]) -> None:
        super().__init__("ok", ca=ca, name=NAME)
        self.script, self._alpn = script, alpn
        self.ends: list[str] = []

    @property
    def alpn(self) -> tuple[str, ...]:
        return self._alpn

    async def serve(self, tls: ServerTLS, behaviour: str) -> None:
        try:
            await self.script(tls)
            while await tls.reader.read(65536):  # the client's close, whatever it sends first
                pass
        except ConnectionResetError:
            self.ends.append("rst")
        except EOFError:  # ServerTLS.recv: the client closed
            self.ends.append("fin")
        else:
            self.ends.append("fin")


async def measure(server: ScriptedServer, job_for: JobFor) -> tuple[HttpFacts, str]:
    """One sample against `server`: its http phase and how the client closed."""
    async with server:
        job, settings = job_for(server.port)
        sample = await http.measure(job, Context(settings=settings))
        for _ in range(100):  # the server sees the close a moment later
            if server.ends:
                break
            await asyncio.sleep(0.01)
    return sample.phases["http"], server.ends[0] if server.ends else "open"


@pytest.fixture
def job_for(make_catalog: Callable[..., LoadedCatalog], ca_file: str) -> JobFor:
    def job(port: int) -> tuple[Job, Settings]:
        loaded = make_catalog({"url": f"https://{NAME}:{port}/path", "address": "127.0.0.1"},
                              ca_file=ca_file, timeout="1s")
        return next(loaded.jobs()), loaded.settings
    return job


async def _request(tls: ServerTLS) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        data = await tls.recv()
        if not data:
            raise EOFError
        head += data
    return head


def h1(reply: bytes) -> Script:
    """Read the request, send `reply`, then FIN (still reading, to see how the client ends)."""
    async def script(tls: ServerTLS) -> None:
        await _request(tls)
        for i in range(0, len(reply), 16384):
            await tls.send(reply[i:i + 16384])
        tls.writer.write_eof()  # FIN after the reply; still reading, to see the client's end
    return script


def run_h1(run: Any, test_ca: TestCA, job_for: JobFor, script: Script
           ) -> tuple[HttpFacts, str]:
    return run(measure(ScriptedServer(script, ca=test_ca, alpn=("http/1.1",)), job_for))


# --- HTTP/1.1 --------------------------------------------------------------------------------


def test_h1_request_and_whole_response_end_with_fin(run: Any, test_ca: TestCA,
                                                    job_for: JobFor) -> None:
    seen: list[bytes] = []

    async def script(tls: ServerTLS) -> None:
        seen.append(await _request(tls))
        await tls.send(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")

    phase, end = run_h1(run, test_ca, job_for, script)
    assert phase.ok and phase.status == 200 and phase.bytes == 5
    assert phase.http_version == "HTTP/1.1" and phase.ttfb_ms is not None
    assert end == "fin"
    request = seen[0].decode().lower()
    assert request.startswith("get /path http/1.1\r\n")
    assert "user-agent: probe\r\n" in request and "accept-encoding: identity\r\n" in request
    assert "host: mock.test:" in request


def test_h1_garbage_is_a_protocol_error(run: Any, test_ca: TestCA,
                                        job_for: JobFor) -> None:
    phase, end = run_h1(run, test_ca, job_for, h1(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"))
    assert not phase.ok and phase.failure == "protocol_error", phase
    assert end == "rst"


def test_h1_close_before_a_response_is_eof(run: Any, test_ca: TestCA,
                                           job_for: JobFor) -> None:
    phase, _ = run_h1(run, test_ca, job_for, h1(b""))
    assert not phase.ok and phase.failure == "eof", phase


def test_h1_close_mid_body_is_eof_with_the_bytes_so_far(run: Any, test_ca: TestCA,
                                                        job_for: JobFor) -> None:
    phase, end = run_h1(run, test_ca, job_for,
                        h1(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + bytes(1000)))
    assert not phase.ok and phase.failure == "eof", phase
    assert phase.status == 200 and phase.bytes == 1000
    assert end == "rst"


def test_h1_body_until_close_is_whole(run: Any, test_ca: TestCA,
                                      job_for: JobFor) -> None:
    phase, end = run_h1(run, test_ca, job_for,
                        h1(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + bytes(70000)))
    assert phase.ok and phase.bytes == 70000 and not phase.truncated, phase
    assert end == "fin"


def test_h1_block_page_and_bad_redirect(run: Any, test_ca: TestCA,
                                        job_for: JobFor) -> None:
    phase, end = run_h1(run, test_ca, job_for, h1(
        b"HTTP/1.1 403 Forbidden\r\ncontent-length: 4\r\n\r\nnope"))
    assert phase.failure == "http_status" and phase.error == "HTTP 403" and end == "rst"
    phase, _ = run_h1(run, test_ca, job_for, h1(
        b"HTTP/1.1 302 Found\r\nlocation: http://[junk/\r\ncontent-length: 0\r\n\r\n"))
    assert phase.ok and phase.status == 302 and phase.location_host is None


# --- HTTP/2 ----------------------------------------------------------------------------------


def h2_server(answer: Callable[[h2.connection.H2Connection, int], Awaitable[None] | None],
              *, body: int = 0) -> Script:
    """A minimal HTTP/2 server: `answer(conn, stream)` on the request; then `body` bytes of
    DATA sent as the client's flow-control windows allow."""

    async def script(tls: ServerTLS) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        await tls.send(conn.data_to_send())
        stream, left = 0, body
        while True:
            if stream and left:
                size = min(left, conn.local_flow_control_window(stream),
                           conn.max_outbound_frame_size)
                if size:
                    conn.send_data(stream, bytes(size), end_stream=size == left)
                    left -= size
                    await tls.send(conn.data_to_send())
                    continue
            data = await tls.recv()
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    stream = event.stream_id
                    await _maybe(answer(conn, stream))
            await tls.send(conn.data_to_send())

    return script


async def _maybe(result: Awaitable[None] | None) -> None:
    if result is not None:
        await result


def run_h2(run: Any, test_ca: TestCA, job_for: JobFor, script: Script
           ) -> tuple[HttpFacts, str]:
    return run(measure(ScriptedServer(script, ca=test_ca, alpn=("h2", "http/1.1")), job_for))


def test_h2_body_far_beyond_the_initial_window_arrives_whole(
    run: Any, test_ca: TestCA, job_for: JobFor
) -> None:
    size = 3 << 20  # h2's default windows are 64 KiB: it arrives only if the client gives back

    def answer(conn: h2.connection.H2Connection, stream: int) -> None:
        conn.send_headers(stream, [(":status", "200"), ("content-length", str(size))])

    phase, end = run_h2(run, test_ca, job_for, h2_server(answer, body=size))
    assert phase.ok, phase
    assert phase.http_version == "HTTP/2" and phase.status == 200
    assert phase.bytes == size and not phase.truncated
    assert end == "fin"


def test_h2_stream_reset_is_a_failure(run: Any, test_ca: TestCA,
                                      job_for: JobFor) -> None:
    def answer(conn: h2.connection.H2Connection, stream: int) -> None:
        conn.reset_stream(stream, h2.errors.ErrorCodes.REFUSED_STREAM)

    phase, end = run_h2(run, test_ca, job_for, h2_server(answer))
    assert not phase.ok and phase.failure == "protocol_error"
    assert "REFUSED_STREAM" in (phase.error or "") and end == "rst"


def test_h2_goaway_is_a_failure(run: Any, test_ca: TestCA,
                                job_for: JobFor) -> None:
    def answer(conn: h2.connection.H2Connection, stream: int) -> None:
        conn.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)

    phase, _ = run_h2(run, test_ca, job_for, h2_server(answer))
    assert not phase.ok and phase.failure == "protocol_error"
    assert "ENHANCE_YOUR_CALM" in (phase.error or "")


def test_h2_garbage_is_a_protocol_error(run: Any, test_ca: TestCA,
                                        job_for: JobFor) -> None:
    async def script(tls: ServerTLS) -> None:
        await tls.recv()
        await tls.send(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")

    phase, end = run_h2(run, test_ca, job_for, script)
    assert not phase.ok and phase.failure == "protocol_error", phase
    assert end == "rst"


def test_h2_close_before_the_end_is_eof(run: Any, test_ca: TestCA,
                                        job_for: JobFor) -> None:
    def answer(conn: h2.connection.H2Connection, stream: int) -> None:
        conn.send_headers(stream, [(":status", "200"), ("content-length", "10")])

    async def script(tls: ServerTLS) -> None:
        serve = asyncio.ensure_future(h2_server(answer)(tls))
        await asyncio.sleep(0.2)
        serve.cancel()
        tls.writer.write_eof()

    phase, _ = run_h2(run, test_ca, job_for, script)
    assert not phase.ok and phase.failure == "eof", phase
    assert phase.status == 200


def test_h2_endless_body_stops_at_the_byte_cap(run: Any, test_ca: TestCA,
                                               job_for: JobFor) -> None:
    # More than the cap, and twice the client's receive windows: the cap is reached only if
    # the client gives the windows back as it reads (flow control), then it stops there.
    size = http.BYTE_CAP + (4 << 20)

    def answer(conn: h2.connection.H2Connection, stream: int) -> None:
        conn.send_headers(stream, [(":status", "200")])

    phase, end = run_h2(run, test_ca, job_for, h2_server(answer, body=size))
    assert phase.ok and phase.capped is True, phase
    assert http.BYTE_CAP <= phase.bytes < http.BYTE_CAP + 65536
    assert end == "rst"
