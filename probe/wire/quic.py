"""QUIC's version-independent packet fields (RFC 8999): the version-negotiation ping and reply.

Strategy: only the invariants are used, never a version's cryptography. The ping is a long-header
packet with a reserved version (0x?a?a?a?a, RFC 9000 section 15), padded to 1200 bytes, the
smallest datagram a server must answer (RFC 9000 section 14.1). It carries no ClientHello and so
no SNI. A server that does not speak that version answers with Version Negotiation (RFC 9000
section 17.2.1): version 0, our connection IDs swapped, then the versions it supports. A censor
that keys on the SNI lets the ping through and drops the real Initial; the contrast is the
diagnosis. Decoders take bytes and return frozen values or raise `QuicCodecError`, nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from probe.errors import CodecError

LONG_HEADER = 0x80  # RFC 8999 section 5.1: the header form bit
FIXED_BIT = 0x40  # RFC 9000 section 17.2: set on every v1 packet; harmless on ours
MIN_DATAGRAM = 1200  # RFC 9000 section 14.1: servers may drop smaller client Initials
NEGOTIATION = 0x00000000
VERSION_1 = 0x00000001
VERSION_2 = 0x6B3343CF
RESERVED_MASK = 0x0F0F0F0F
RESERVED_BITS = 0x0A0A0A0A


class QuicCodecError(CodecError):
    """Bytes that are not the QUIC packet the caller asked to decode."""


class NotVersionNegotiation(QuicCodecError):
    """A well-formed long header, but not a Version Negotiation packet (version is not 0)."""


def is_reserved_version(version: int) -> bool:
    """A version of the form 0x?a?a?a?a, kept by RFC 9000 section 15 to exercise negotiation."""
    return version & RESERVED_MASK == RESERVED_BITS


def reserved_version(random_bits: int) -> int:
    """A reserved version made from 32 random bits (the low nibble of each byte is forced)."""
    return (random_bits & ~RESERVED_MASK & 0xFFFFFFFF) | RESERVED_BITS


@dataclass(frozen=True, slots=True)
class LongHeader:
    """The invariant fields of a long-header packet: version and both connection IDs."""

    version: int
    dcid: bytes
    scid: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.version <= 0xFFFFFFFF:
            raise ValueError(f"version out of range: {self.version}")
        if len(self.dcid) > 255 or len(self.scid) > 255:
            raise ValueError("a connection ID is at most 255 bytes (RFC 8999 section 5.1)")


@dataclass(frozen=True, slots=True)
class VersionNegotiation:
    """A server's Version Negotiation packet: the CIDs it echoes and the versions it offers."""

    dcid: bytes
    scid: bytes
    versions: tuple[int, ...]

    def answers(self, ping: LongHeader) -> bool:
        """True when this reply echoes the ping's CIDs, swapped (RFC 9000 section 17.2.1)."""
        return self.dcid == ping.scid and self.scid == ping.dcid


def new_version_ping(random_bytes: Callable[[int], bytes] = os.urandom) -> LongHeader:
    """A ping with a random reserved version and random CIDs (8 bytes each, the v1 minimum
    for a client's first DCID, RFC 9000 section 7.2)."""
    bits = int.from_bytes(random_bytes(4), "big")
    return LongHeader(reserved_version(bits), random_bytes(8), random_bytes(8))


def encode_version_ping(ping: LongHeader, size: int = MIN_DATAGRAM) -> bytes:
    """The ping as one datagram of `size` bytes: shaped like an Initial, without a payload.

    After the invariant fields come an empty token and a 2-byte Length, as an Initial has, then
    zeros: nothing a server of another version could take for a ClientHello.
    """
    head = _encode_invariant(LONG_HEADER | FIXED_BIT, ping.version, ping.dcid, ping.scid)
    rest = size - len(head) - 3  # token length (1) + Length varint (2)
    if rest < 0 or rest > 0x3FFF:
        raise ValueError(f"cannot make a {size}-byte ping with these connection IDs")
    return head + b"\x00" + (0x4000 | rest).to_bytes(2, "big") + bytes(rest)


def encode_version_negotiation(reply: VersionNegotiation, first_byte: int = 0xC0) -> bytes:
    """A Version Negotiation packet (for mock servers); the low 7 bits of `first_byte` are
    unused by the spec and left to the caller."""
    head = _encode_invariant(LONG_HEADER | (first_byte & 0x7F), NEGOTIATION, reply.dcid, reply.scid)
    return head + b"".join(v.to_bytes(4, "big") for v in reply.versions)


def decode_long_header(data: bytes) -> LongHeader:
    """The invariant fields of a long-header packet; raises QuicCodecError otherwise."""
    header, _ = _decode_invariant(data)
    return header


def decode_version_negotiation(data: bytes) -> VersionNegotiation:
    """Parse a Version Negotiation packet; raises QuicCodecError (NotVersionNegotiation when
    the packet is a long header of some other version)."""
    header, offset = _decode_invariant(data)
    if header.version != NEGOTIATION:
        raise NotVersionNegotiation(f"long header of version 0x{header.version:08x}")
    listing = data[offset:]
    if not listing:
        raise QuicCodecError("version negotiation lists no version")
    if len(listing) % 4:
        raise QuicCodecError(f"version list of {len(listing)} bytes is not a multiple of 4")
    versions = tuple(int.from_bytes(listing[i : i + 4], "big") for i in range(0, len(listing), 4))
    return VersionNegotiation(header.dcid, header.scid, versions)


def _encode_invariant(first_byte: int, version: int, dcid: bytes, scid: bytes) -> bytes:
    return (
        bytes([first_byte])
        + version.to_bytes(4, "big")
        + bytes([len(dcid)])
        + dcid
        + bytes([len(scid)])
        + scid
    )


def _decode_invariant(data: bytes) -> tuple[LongHeader, int]:
    """(header, offset just after the SCID). RFC 8999 section 5.1."""
    if not data:
        raise QuicCodecError("empty datagram")
    if not data[0] & LONG_HEADER:
        raise QuicCodecError("short header packet")
    if len(data) < 6:
        raise QuicCodecError(f"long header truncated at {len(data)} bytes")
    version = int.from_bytes(data[1:5], "big")
    dcid_end = 6 + data[5]
    if len(data) < dcid_end + 1:
        raise QuicCodecError("long header truncated in the destination connection ID")
    scid_end = dcid_end + 1 + data[dcid_end]
    if len(data) < scid_end:
        raise QuicCodecError("long header truncated in the source connection ID")
    header = LongHeader(version, bytes(data[6:dcid_end]), bytes(data[dcid_end + 1 : scid_end]))
    return header, scid_end
