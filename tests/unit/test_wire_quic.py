"""The QUIC version-negotiation codec: tables both ways, truncation, interop with aioquic, fuzz."""

from __future__ import annotations

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.packet import (
    QuicPacketType,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from hypothesis import given
from hypothesis import strategies as st

from probe.errors import CodecError
from probe.wire.quic import (
    LongHeader,
    NotVersionNegotiation,
    QuicCodecError,
    VersionNegotiation,
    decode_long_header,
    decode_version_negotiation,
    encode_version_negotiation,
    encode_version_ping,
    is_reserved_version,
    new_version_ping,
    reserved_version,
)

# (reply, its bytes with first byte 0xc0)
NEGOTIATIONS: list[tuple[VersionNegotiation, bytes]] = [
    (
        VersionNegotiation(b"\x01\x02", b"\x03", (1,)),
        bytes.fromhex("c0 00000000 02 0102 01 03 00000001"),
    ),
    (
        VersionNegotiation(b"", b"", (1, 0x6B3343CF, 0x1A2A3A4A)),
        bytes.fromhex("c0 00000000 00 00 00000001 6b3343cf 1a2a3a4a"),
    ),
    (
        VersionNegotiation(bytes(range(20)), bytes(8), (0xFF00001D,)),
        bytes.fromhex("c0 00000000 14") + bytes(range(20)) + bytes.fromhex("08")
        + bytes(8) + bytes.fromhex("ff00001d"),
    ),
]


@pytest.mark.parametrize(("reply", "wire"), NEGOTIATIONS)
def test_version_negotiation_both_ways(reply: VersionNegotiation, wire: bytes) -> None:
    assert encode_version_negotiation(reply) == wire
    assert decode_version_negotiation(wire) == reply


@pytest.mark.parametrize(("reply", "wire"), NEGOTIATIONS)
def test_version_negotiation_truncated_raises(reply: VersionNegotiation, wire: bytes) -> None:
    # Every cut that cannot hold a whole version list must raise; a cut on a version boundary
    # after the first version is a shorter but valid list.
    cid_end = 7 + len(reply.dcid) + len(reply.scid)
    for cut in range(len(wire)):
        if cut >= cid_end + 4 and (cut - cid_end) % 4 == 0:
            assert decode_version_negotiation(wire[:cut]).versions == reply.versions[
                : (cut - cid_end) // 4]
            continue
        with pytest.raises(QuicCodecError):
            decode_version_negotiation(wire[:cut])


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"", "empty"),
        (bytes.fromhex("40 00000000 00 00"), "short header"),
        (bytes.fromhex("c0 00000000 00 00 000001"), "multiple of 4"),
        (bytes.fromhex("c0 00000000 00 00"), "no version"),
        (bytes.fromhex("c0 00000000 05 0102"), "destination"),
        (bytes.fromhex("c0 00000000 00 04 0102"), "source"),
    ],
)
def test_malformed_version_negotiation(wire: bytes, message: str) -> None:
    with pytest.raises(QuicCodecError, match=message):
        decode_version_negotiation(wire)


def test_other_version_is_not_negotiation() -> None:
    ping = LongHeader(1, b"abcdefgh", b"12345678")
    with pytest.raises(NotVersionNegotiation):
        decode_version_negotiation(encode_version_ping(ping))
    assert issubclass(QuicCodecError, CodecError)


def test_version_ping_layout() -> None:
    ping = LongHeader(0x1A2A3A4A, b"D" * 8, b"S" * 8)
    wire = encode_version_ping(ping)
    assert len(wire) == 1200
    assert wire[:6] == bytes.fromhex("c0 1a2a3a4a 08")
    assert wire[6:14] == b"D" * 8 and wire[14] == 8 and wire[15:23] == b"S" * 8
    # empty token, then a 2-byte Length covering the rest, then zeros: no ClientHello, no SNI
    assert wire[23] == 0 and int.from_bytes(wire[24:26], "big") == 0x4000 | (1200 - 26)
    assert wire[26:] == bytes(1200 - 26)
    assert decode_long_header(wire) == ping
    assert len(encode_version_ping(ping, size=1350)) == 1350
    with pytest.raises(ValueError):
        encode_version_ping(ping, size=20)


def test_reserved_versions() -> None:
    assert reserved_version(0) == 0x0A0A0A0A
    assert reserved_version(0xFFFFFFFF) == 0xFAFAFAFA
    assert reserved_version(0x12345678) == 0x1A3A5A7A
    for version in (0x0A0A0A0A, 0xFAFAFAFA, 0x1A2A3A4A):
        assert is_reserved_version(version)
    for version in (0, 1, 0x6B3343CF, 0xFF00001D, 0x0A0A0A0B):
        assert not is_reserved_version(version)


def test_new_ping_is_random_and_reserved() -> None:
    pings = [new_version_ping() for _ in range(50)]
    assert all(is_reserved_version(p.version) for p in pings)
    assert all(len(p.dcid) == 8 and len(p.scid) == 8 for p in pings)
    assert len({p.dcid for p in pings}) == 50
    fixed = new_version_ping(lambda n: bytes([7]) * n)
    assert fixed == LongHeader(0x0A0A0A0A, bytes([7]) * 8, bytes([7]) * 8)


def test_answers_matches_swapped_cids() -> None:
    ping = LongHeader(0x0A0A0A0A, b"client-d", b"client-s")
    assert VersionNegotiation(b"client-s", b"client-d", (1,)).answers(ping)
    assert not VersionNegotiation(b"client-d", b"client-s", (1,)).answers(ping)


def test_interop_with_aioquic() -> None:
    # aioquic reads our ping as a long header of our version, and its VN decodes with ours.
    ping = new_version_ping()
    header = pull_quic_header(Buffer(data=encode_version_ping(ping)), host_cid_length=8)
    assert header.version == ping.version
    assert header.destination_cid == ping.dcid and header.source_cid == ping.scid
    theirs = encode_quic_version_negotiation(
        source_cid=ping.dcid, destination_cid=ping.scid, supported_versions=[1, 0x6B3343CF])
    reply = decode_version_negotiation(theirs)
    assert reply.answers(ping) and reply.versions == (1, 0x6B3343CF)
    ours = encode_version_negotiation(reply)
    header = pull_quic_header(Buffer(data=ours), host_cid_length=8)
    assert header.packet_type == QuicPacketType.VERSION_NEGOTIATION
    assert header.supported_versions == [1, 0x6B3343CF]


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_codec_errors(data: bytes) -> None:
    for decode in (decode_version_negotiation, decode_long_header):
        try:
            decode(data)
        except QuicCodecError:
            pass


@given(st.binary(min_size=7, max_size=300))
def test_long_headers_with_random_tails(tail: bytes) -> None:
    # Bias towards well-formed prefixes so the deeper branches are reached too.
    data = bytes([0xC0]) + bytes(4) + tail
    try:
        reply = decode_version_negotiation(data)
    except QuicCodecError:
        return
    assert encode_version_negotiation(reply) == data


# --- CONNECTION_CLOSE codes -> failure facts (probe.failures, used by the quic layer) ---------

CLOSES = [
    # (error code, reason phrase, by peer, fact)
    (0x2, "policy", True, "peer_closed"),
    (0x0, "", True, "peer_closed"),
    (0x100 + 40, "handshake failure", True, "peer_closed"),
    (0x178, "No common ALPN protocols", True, "alpn_refused"),
    (0x12A, "unable to get local issuer certificate", False, "untrusted_certificate"),
    (0x12D, "Certificate is no longer valid", False, "untrusted_certificate"),
    (0x130, "self-signed certificate", False, "untrusted_certificate"),
    (0x12A, "hostname 'a.test' doesn't match 'b.test'", False, "hostname_mismatch"),
    (0x12A, "Certificate does not contain any `subjectAltName`s.", False, "hostname_mismatch"),
    (0x128, "handshake failure", False, "tls_alert"),
    (0x1, "Could not find a common protocol version", False, "protocol_error"),
    (0xA, "", False, "protocol_error"),
]


@pytest.mark.parametrize(("code", "reason", "by_peer", "fact"), CLOSES)
def test_quic_close_facts(code: int, reason: str, by_peer: bool, fact: str) -> None:
    from probe.classify import reason_of
    from probe.failures import quic_close_fact

    assert quic_close_fact(code, reason, by_peer=by_peer) == fact
    expected = {"peer_closed": "quic.closed", "alpn_refused": "quic.closed",
                "untrusted_certificate": "tls.untrusted", "hostname_mismatch": "tls.hostname",
                "tls_alert": "tls.alert", "protocol_error": "quic.closed"}[fact]
    assert reason_of("quic", fact) == expected


def test_udp_refusal_is_port_unreachable() -> None:
    import errno

    from probe.classify import reason_of
    from probe.failures import classify_udp_error

    fact, _ = classify_udp_error(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    assert fact == "port_unreachable" and reason_of("quic", fact) == "udp.unreachable"
    assert classify_udp_error(OSError(errno.ENETUNREACH, "x"))[0] == "network_unreachable"
