"""One table from exceptions and errno values to failure facts (`timeout`, `connection_reset`...).

A failure fact says what happened on the wire, in words that stay stable across Python versions
and platforms, so saved runs stay comparable. It is stored with the layer that failed; the
classifier turns (layer, failure) into a reason code. Nothing else in the code base inspects an
exception's type or message to decide what happened.

Order of the rules (most specific first): our own marker exceptions, errno values, TLS
certificate verification, other exception types, then `unknown`.
"""

from __future__ import annotations

import errno
import ssl

# The facts. Keep these strings stable: they are written into result files.
TIMEOUT = "timeout"
CONNECTION_REFUSED = "connection_refused"
CONNECTION_RESET = "connection_reset"
EOF_ = "eof"
HOST_UNREACHABLE = "host_unreachable"
NETWORK_UNREACHABLE = "network_unreachable"
PORT_UNREACHABLE = "port_unreachable"  # ICMP port unreachable on a connected UDP socket
ADDRESS_UNAVAILABLE = "address_unavailable"  # no route/address of this family on this host
UNTRUSTED_CERTIFICATE = "untrusted_certificate"
HOSTNAME_MISMATCH = "hostname_mismatch"
# A certificate OpenSSL accepted that no X.509 parser should (version byte 5, ...): a hostile
# server's, or an interceptor's; no standard client would take it.
MALFORMED_CERTIFICATE = "malformed_certificate"
TLS_ALERT = "tls_alert"
PROTOCOL_ERROR = "protocol_error"
NXDOMAIN = "nxdomain"
NO_ANSWER = "no_answer"
SERVFAIL = "servfail"
REFUSED = "refused"
HTTP_STATUS = "http_status"
STALL = "stall"
CUTOFF = "cutoff"  # a sustained UDP exchange answered at first, then silent to the end
PEER_CLOSED = "peer_closed"  # QUIC CONNECTION_CLOSE from the peer or a middlebox
ALPN_REFUSED = "alpn_refused"  # QUIC: the peer closed with no_application_protocol (0x178)
NOT_IMPLEMENTED = "not_implemented"
# This host ran out of something (file descriptors, buffers, memory): says nothing about the
# network, so it must never read as a block.
LOCAL_LIMIT = "local_limit"
UNKNOWN = "unknown"

ERRNO_FACTS: dict[int, str] = {
    errno.ETIMEDOUT: TIMEOUT,
    errno.ECONNREFUSED: CONNECTION_REFUSED,
    errno.ECONNRESET: CONNECTION_RESET,
    errno.ECONNABORTED: CONNECTION_RESET,
    errno.EPIPE: CONNECTION_RESET,
    errno.EHOSTUNREACH: HOST_UNREACHABLE,
    errno.EHOSTDOWN: HOST_UNREACHABLE,
    errno.ENETUNREACH: NETWORK_UNREACHABLE,
    errno.ENETDOWN: NETWORK_UNREACHABLE,
    errno.EACCES: HOST_UNREACHABLE,  # ICMP administratively prohibited, or a local firewall
    errno.EPERM: HOST_UNREACHABLE,
    errno.EADDRNOTAVAIL: ADDRESS_UNAVAILABLE,
    errno.EAFNOSUPPORT: ADDRESS_UNAVAILABLE,
    errno.EPROTO: PROTOCOL_ERROR,
    errno.EMFILE: LOCAL_LIMIT,
    errno.ENFILE: LOCAL_LIMIT,
    errno.ENOBUFS: LOCAL_LIMIT,
    errno.EAGAIN: LOCAL_LIMIT,  # a UDP send the host's buffers could not take (layers/udp.py)
    errno.ENOMEM: LOCAL_LIMIT,
    errno.EMSGSIZE: LOCAL_LIMIT,  # a datagram larger than this host's path allows
    errno.EADDRINUSE: LOCAL_LIMIT,  # no free source port
}


# What an errno reads as in `detail`: words of ours, never the exception's text, which is the
# library's and the platform's ("Connect call failed ('127.0.0.66', 46527)" is asyncio's for
# ECONNREFUSED, "[Errno 111] Connection refused" Python's) and may carry an address.
ERRNO_WORDS: dict[int, str] = {
    errno.ETIMEDOUT: "timed out",
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ECONNABORTED: "connection aborted",
    errno.EPIPE: "connection reset (broken pipe)",
    errno.EHOSTUNREACH: "host unreachable",
    errno.EHOSTDOWN: "host down",
    errno.ENETUNREACH: "network unreachable",
    errno.ENETDOWN: "network down",
    errno.EACCES: "prohibited (an ICMP \"administratively prohibited\", or a local firewall)",
    errno.EPERM: "prohibited (an ICMP \"administratively prohibited\", or a local firewall)",
    errno.EADDRNOTAVAIL: "no local address to reach it from",
    errno.EAFNOSUPPORT: "this address family cannot be used here",
    errno.EPROTO: "protocol error",
    errno.EMFILE: "this process ran out of file descriptors",
    errno.ENFILE: "this host ran out of file descriptors",
    errno.ENOBUFS: "this host ran out of buffer space",
    errno.EAGAIN: "this host's send buffers were full",
    errno.ENOMEM: "this host ran out of memory",
    errno.EMSGSIZE: "a datagram larger than this host's path allows",
    errno.EADDRINUSE: "no free source port",
}


def _tls_words(reason: str) -> str:
    """An OpenSSL reason code in words: 'TLSV1_ALERT_PROTOCOL_VERSION' -> 'TLS alert:
    protocol version', 'WRONG_VERSION_NUMBER' -> 'TLS error: wrong version number'."""
    words = reason.lower().replace("_", " ")
    for prefix in ("sslv3 alert ", "tlsv1 alert ", "tlsv13 alert "):
        if words.startswith(prefix):
            return f"TLS alert: {words[len(prefix):]}"
    return f"TLS error: {words}"


class Failed(Exception):
    """Raised inside a layer to record a failure fact directly (no OS error behind it)."""

    def __init__(self, failure: str, message: str = "") -> None:
        super().__init__(message or failure)
        self.failure = failure
        self.message = message or failure


def classify_exception(exc: BaseException) -> tuple[str, str]:
    """(failure fact, message for `detail`) for an exception raised while measuring."""
    if isinstance(exc, Failed):
        return exc.failure, exc.message
    if isinstance(exc, TimeoutError):
        return TIMEOUT, "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _certificate(exc), exc.verify_message or "certificate not accepted"
    if isinstance(exc, ssl.SSLError):
        fact = _ssl(exc)
        if fact == EOF_:
            return fact, "connection closed"
        return fact, _tls_words(exc.reason) if exc.reason else "TLS error"
    if isinstance(exc, OSError) and exc.errno in ERRNO_FACTS:
        return ERRNO_FACTS[exc.errno], ERRNO_WORDS[exc.errno]
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return CONNECTION_RESET, "connection reset"
    if isinstance(exc, ConnectionRefusedError):
        return CONNECTION_REFUSED, "connection refused"
    if isinstance(exc, EOFError | ConnectionAbortedError):
        return EOF_, "connection closed"
    if isinstance(exc, OSError) and exc.errno is None and "EOF" in type(exc).__name__:
        return EOF_, "connection closed"
    if type(exc).__name__ == "RemoteProtocolError":  # h11's and httpx's, not imported here
        # h11 words a hang-up "peer closed connection without sending complete message body"
        # or "peer unexpectedly closed connection", httpcore "Server disconnected"; anything
        # else is a response we could not parse (garbage, "Receive buffer too long").
        text = str(exc).lower()
        if "closed" in text or "disconnected" in text:
            return EOF_, "connection closed before the whole response"
        return PROTOCOL_ERROR, "an answer that is not valid HTTP/1.1"
    if type(exc).__module__.startswith("h2.") and any(
            c.__name__ == "ProtocolError" for c in type(exc).__mro__):
        # h2 (HTTP/2 frames): the server sent what HTTP/2 forbids, or garbage
        return PROTOCOL_ERROR, "the server broke the HTTP/2 protocol"
    # A library's wrapper (httpx.ConnectError around an OSError) says what its cause says.
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc:
        failure, message = classify_exception(cause)
        if failure != UNKNOWN:
            return failure, message
    return UNKNOWN, f"{type(exc).__name__}: {exc}"


def _certificate(exc: ssl.SSLCertVerificationError) -> str:
    # OpenSSL X509_V_ERR_HOSTNAME_MISMATCH = 62, IP mismatch = 64
    if exc.verify_code in (62, 64):
        return HOSTNAME_MISMATCH
    return UNTRUSTED_CERTIFICATE


def _ssl(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return EOF_
    reason = (exc.reason or "").upper()
    if reason.startswith(("SSLV3_ALERT", "TLSV1_ALERT", "TLSV13_ALERT")) or "ALERT" in reason:
        return TLS_ALERT
    if "UNEXPECTED_EOF" in reason:
        return EOF_
    return PROTOCOL_ERROR


def classify_udp_error(exc: BaseException) -> tuple[str, str]:
    """Like classify_exception, for a connected UDP socket, where Linux reports an ICMP port
    unreachable as ECONNREFUSED on the next send or receive."""
    if isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED:
        return PORT_UNREACHABLE, "ICMP port unreachable"
    return classify_exception(exc)


# RFC 9001 section 4.8: a TLS alert travels as QUIC error 0x100 + the alert number.
QUIC_CRYPTO_ERROR = 0x100
_CERTIFICATE_ALERTS = {42, 43, 44, 45, 46, 48}  # bad/unsupported/revoked/expired/unknown/unknown_ca
_NO_APPLICATION_PROTOCOL = 120


def quic_close_fact(error_code: int, reason_phrase: str, *, by_peer: bool) -> str:
    """The failure fact of a QUIC handshake that ended in CONNECTION_CLOSE.

    `by_peer`: the server (or a middlebox) sent it; otherwise our own QUIC stack closed, as
    aioquic does when the server's certificate fails verification.
    """
    alert = error_code - QUIC_CRYPTO_ERROR if 0 <= error_code - QUIC_CRYPTO_ERROR < 256 else None
    if by_peer:
        return ALPN_REFUSED if alert == _NO_APPLICATION_PROTOCOL else PEER_CLOSED
    if alert in _CERTIFICATE_ALERTS:
        # aioquic checks the name before the chain and words a mismatch "hostname 'a' doesn't
        # match 'b'", or names the missing subjectAltName; anything else is the chain.
        if "doesn't match" in reason_phrase or "subjectAltName" in reason_phrase:
            return HOSTNAME_MISMATCH
        return UNTRUSTED_CERTIFICATE
    if alert is not None:
        return TLS_ALERT
    return PROTOCOL_ERROR
