"""failures.classify_exception: every errno row, real TLS errors from in-memory handshakes, unknown."""

from __future__ import annotations

import errno
import os
import re
import ssl
from pathlib import Path

import h2.config
import h2.connection
import h2.exceptions
import h11
import httpx
import pytest

from probe import failures as F
from probe.classify import reason_of
from probe.classify.reasons import REASONS, REFINED, STATUS_OF_REASON
from probe.failures import Failed, classify_exception
from probe.mock.certs import TestCA
from probe.mock.tls import server_context

# The errno values a connect, send or receive can end in (connect(2), send(2), recv(2),
# socket(2), udp(7), ip(7) on Linux), listed here from the manual pages, not from the table:
# each must become a fact, never `unknown`.
MET_BY_THE_LAYERS = [
    "ETIMEDOUT", "ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "EPIPE", "EHOSTUNREACH",
    "EHOSTDOWN", "ENETUNREACH", "ENETDOWN", "EACCES", "EPERM", "EADDRNOTAVAIL", "EAFNOSUPPORT",
    "EPROTO", "EMFILE", "ENFILE", "ENOBUFS", "EAGAIN", "ENOMEM", "EMSGSIZE", "EADDRINUSE",
]


@pytest.mark.parametrize("name", MET_BY_THE_LAYERS)
def test_every_errno_the_layers_meet_is_a_fact(name: str) -> None:
    code = getattr(errno, name)
    failure, message = classify_exception(OSError(code, os.strerror(code)))
    assert failure != F.UNKNOWN, name
    assert message  # the OS wording, for `detail`


def _facts() -> list[str]:
    return sorted({v for k, v in vars(F).items() if k.isupper() and isinstance(v, str)})


def _documented_codes() -> set[str]:
    """The reason codes of the README's table (the codes users are promised)."""
    readme = Path(__file__).resolve().parents[2] / "README.md"
    return set(re.findall(r"^\| `([a-z]+(?:\.[a-z_]+)?)`", readme.read_text(encoding="utf-8"),
                          re.MULTILINE)) | {
        code for row in re.findall(r"^\| (`[a-z._]+`(?: / `[a-z._]+`)+) \|",
                                   readme.read_text(encoding="utf-8"), re.MULTILINE)
        for code in re.findall(r"`([a-z._]+)`", row)}


@pytest.mark.parametrize("layer", sorted({layer for layer, _ in REASONS}))
def test_every_fact_of_every_layer_maps_to_a_documented_code(layer: str) -> None:
    documented = _documented_codes()
    for fact in _facts():
        assert reason_of(layer, fact) in documented, (layer, fact, reason_of(layer, fact))


def test_every_code_a_rule_can_name_is_documented() -> None:
    documented = _documented_codes()
    named = set(REASONS.values()) | set(STATUS_OF_REASON) | REFINED
    assert named <= documented, named - documented


@pytest.mark.parametrize(("exc", "fact"), [
    (Failed(F.STALL, "stalled after 16384 bytes"), F.STALL),
    (TimeoutError(), F.TIMEOUT),
    (ConnectionResetError(errno.ECONNRESET, "reset"), F.CONNECTION_RESET),
    (ConnectionResetError("no errno"), F.CONNECTION_RESET),
    (BrokenPipeError(), F.CONNECTION_RESET),
    (ConnectionRefusedError("no errno"), F.CONNECTION_REFUSED),
    (EOFError("client closed"), F.EOF_),
    (ConnectionAbortedError(), F.EOF_),
])
def test_exception_types(exc: BaseException, fact: str) -> None:
    assert classify_exception(exc)[0] == fact


def test_failed_keeps_its_message() -> None:
    assert classify_exception(Failed(F.STALL, "16 KiB then nothing")) == (F.STALL,
                                                                          "16 KiB then nothing")


def test_unknown_names_the_type() -> None:
    failure, message = classify_exception(ValueError("odd"))
    assert failure == F.UNKNOWN and message == "ValueError: odd"


@pytest.mark.parametrize(("text", "fact"), [
    ("peer closed connection without sending complete message body", F.EOF_),
    ("Server disconnected without sending a response.", F.EOF_),
    ("illegal status line: bytearray(b'garbage')", F.PROTOCOL_ERROR),
])
def test_httpx_remote_protocol_errors(text: str, fact: str) -> None:
    assert classify_exception(httpx.RemoteProtocolError(text))[0] == fact


def test_h11_errors_from_a_real_parser() -> None:
    """What the https layer's h11 raises: a hang-up is eof, garbage or a header bomb not."""
    def error(reply: bytes, eof: bool) -> BaseException:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=1024)
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(reply)
        if eof:
            conn.receive_data(b"")
        with pytest.raises(h11.RemoteProtocolError) as caught:
            while conn.next_event() is not h11.NEED_DATA:
                pass
        return caught.value

    body = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"
    assert classify_exception(error(body, eof=True))[0] == F.EOF_
    assert classify_exception(error(b"HTTP/1.1 20", eof=True))[0] == F.EOF_
    assert classify_exception(error(b"SSH-2.0-OpenSSH\r\n\r\n", eof=False))[0] == F.PROTOCOL_ERROR
    bomb = b"HTTP/1.1 200 OK\r\n" + b"x: y\r\n" * 1000
    assert classify_exception(error(bomb, eof=False))[0] == F.PROTOCOL_ERROR


def test_h2_protocol_errors_from_a_real_connection() -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    with pytest.raises(h2.exceptions.ProtocolError) as caught:  # a frame over 16 KiB
        conn.receive_data(b"\x00\xff\xff\x04\x00\x00\x00\x00\x00" + bytes(0xffff))
    assert classify_exception(caught.value)[0] == F.PROTOCOL_ERROR
    assert classify_exception(h2.exceptions.StreamClosedError(1))[0] == F.PROTOCOL_ERROR


# --- TLS: real exceptions from handshakes between memory BIOs -------------------------------


def client_error(server: ssl.SSLContext | None, client: ssl.SSLContext, sni: str,
                 reply: bytes | None = None) -> ssl.SSLError:
    """The error a client handshake ends with, against `server` or a canned `reply` (then EOF)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    tls = client.wrap_bio(c_in, c_out, server_hostname=sni)
    peer = server.wrap_bio(s_in, s_out, server_side=True) if server else None
    for _ in range(10):
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            return exc
        hello = c_out.read()
        if peer is None:
            c_in.write(reply or b"")
            c_in.write_eof()
            continue
        s_in.write(hello)
        try:
            peer.do_handshake()
        except ssl.SSLError:  # the server gives up too; its alert is in s_out
            pass
        c_in.write(s_out.read())
    raise AssertionError("the handshake did not fail")


@pytest.fixture(scope="module")
def trusting_client(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestCA, ssl.SSLContext]:
    ca = TestCA()
    context = ssl.create_default_context(
        cafile=str(ca.write_ca(tmp_path_factory.mktemp("ca") / "ca.pem")))
    return ca, context


def test_tls_untrusted_chain(trusting_client: tuple[TestCA, ssl.SSLContext]) -> None:
    _, client = trusting_client
    other = server_context(TestCA("interceptor").issue("mock.test"), ())
    exc = client_error(other, client, "mock.test")
    assert isinstance(exc, ssl.SSLCertVerificationError)
    assert classify_exception(exc)[0] == F.UNTRUSTED_CERTIFICATE


def test_tls_hostname_mismatch(trusting_client: tuple[TestCA, ssl.SSLContext]) -> None:
    ca, client = trusting_client
    exc = client_error(server_context(ca.issue("other.test"), ()), client, "mock.test")
    assert classify_exception(exc)[0] == F.HOSTNAME_MISMATCH


def test_tls_alert_from_the_peer(trusting_client: tuple[TestCA, ssl.SSLContext]) -> None:
    _, client = trusting_client
    alert = bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28])  # fatal handshake_failure
    assert classify_exception(client_error(None, client, "mock.test", alert))[0] == F.TLS_ALERT


def test_tls_eof_during_handshake(trusting_client: tuple[TestCA, ssl.SSLContext]) -> None:
    _, client = trusting_client
    assert classify_exception(client_error(None, client, "mock.test"))[0] == F.EOF_


def test_tls_garbage_is_a_protocol_error(trusting_client: tuple[TestCA, ssl.SSLContext]) -> None:
    _, client = trusting_client
    exc = client_error(None, client, "mock.test", b"HTTP/1.1 403 Forbidden\r\n\r\n")
    assert classify_exception(exc)[0] == F.PROTOCOL_ERROR


# --- and each fact of these layers leads to the code CONTRACT.md §4 gives it -------------------


@pytest.mark.parametrize(("layer", "fact", "code"), [
    ("tcp", F.TIMEOUT, "tcp.timeout"),
    ("tcp", F.CONNECTION_REFUSED, "tcp.reset"),
    ("tcp", F.CONNECTION_RESET, "tcp.reset"),
    ("tcp", F.HOST_UNREACHABLE, "tcp.unreachable"),
    ("tcp", F.NETWORK_UNREACHABLE, "tcp.unreachable"),
    ("tls", F.TIMEOUT, "tls.timeout"),
    ("tls", F.CONNECTION_RESET, "tls.reset"),
    ("tls", F.EOF_, "tls.eof"),
    ("tls", F.UNTRUSTED_CERTIFICATE, "tls.untrusted"),
    ("tls", F.HOSTNAME_MISMATCH, "tls.hostname"),
    ("tls", F.TLS_ALERT, "tls.alert"),
    ("http", F.TIMEOUT, "http.timeout"),
    ("http", F.CONNECTION_RESET, "http.reset"),
    ("http", F.EOF_, "http.reset"),
    ("http", F.HTTP_STATUS, "http.status"),
    ("http", F.STALL, "http.stall"),
])
def test_reason_codes(layer: str, fact: str, code: str) -> None:
    assert reason_of(layer, fact) == code
