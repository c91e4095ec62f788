"""The STUN codec: a table of messages and their bytes run both ways, RFC 5769 vectors, fuzzing."""

from __future__ import annotations

import ipaddress
import os
import time
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probe.errors import CodecError
from probe.wire import stun
from probe.wire.stun import (
    Class,
    ErrorCode,
    Fingerprint,
    MappedAddress,
    Message,
    Method,
    Nonce,
    Realm,
    RequestedTransport,
    Software,
    StunCodecError,
    UnknownAttribute,
    XorMappedAddress,
    decode_message,
    encode_message,
)

# The RFC 5769 transaction id, reused so the address vectors below are the RFC's own bytes.
TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
COOKIE = "2112a442"


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def with_fingerprint(data: bytes) -> bytes:
    """Append a FINGERPRINT computed here, independently of the codec (RFC 8489 section 14.7)."""
    length = int.from_bytes(data[2:4], "big") + 8
    data = data[:2] + length.to_bytes(2, "big") + data[4:]
    crc = (zlib.crc32(data) ^ 0x5354554E) & 0xFFFFFFFF
    return data + h("8028 0004") + crc.to_bytes(4, "big")


# (message, its bytes): every row is encoded and decoded, like h11's SIMPLE_CASES.
SIMPLE_CASES: list[tuple[Message, bytes]] = [
    (
        Message(Method.BINDING, Class.REQUEST, TID),
        h(f"0001 0000 {COOKIE}") + TID,
    ),
    (
        Message(Method.ALLOCATE, Class.REQUEST, TID, (RequestedTransport(17),)),
        h(f"0003 0008 {COOKIE}") + TID + h("0019 0004 11000000"),
    ),
    (  # RFC 5769 section 2.2: 192.0.2.1 port 32853
        Message(Method.BINDING, Class.SUCCESS, TID,
                (XorMappedAddress(ipaddress.ip_address("192.0.2.1"), 32853),)),
        h(f"0101 000c {COOKIE}") + TID + h("0020 0008 0001a147 e112a643"),
    ),
    (  # RFC 5769 section 2.3: 2001:db8:1234:5678:11:2233:4455:6677 port 32853
        Message(Method.BINDING, Class.SUCCESS, TID,
                (XorMappedAddress(ipaddress.ip_address("2001:db8:1234:5678:11:2233:4455:6677"),
                                  32853),)),
        h(f"0101 0018 {COOKIE}") + TID
        + h("0020 0014 0002a147 0113a9fa a5d3f179 bc25f4b5 bed2b9d9"),
    ),
    (
        Message(Method.BINDING, Class.SUCCESS, TID,
                (MappedAddress(ipaddress.ip_address("192.0.2.1"), 8080),)),
        h(f"0101 000c {COOKIE}") + TID + h("0001 0008 00011f90 c0000201"),
    ),
    (  # TURN's first answer: 401, REALM (11 bytes + 1 pad) and NONCE (3 + 1 pad)
        Message(Method.ALLOCATE, Class.ERROR, TID,
                (ErrorCode(401, "Unauthorized"), Realm("example.org"), Nonce("abc"))),
        h(f"0113 002c {COOKIE}") + TID
        + h("0009 0010 00000401") + b"Unauthorized"
        + h("0014 000b") + b"example.org\x00"
        + h("0015 0003") + b"abc\x00",
    ),
    (
        Message(Method.BINDING, Class.ERROR, TID, (ErrorCode(699, ""), Software("x"))),
        h(f"0111 0010 {COOKIE}") + TID + h("0009 0004 00000663") + h("8022 0001 78000000"),
    ),
    (  # an attribute the codec does not know is kept raw; odd lengths are padded
        Message(Method.BINDING, Class.INDICATION, TID, (UnknownAttribute(0xABCD, b"\x01\x02\x03"),)),
        h(f"0011 0008 {COOKIE}") + TID + h("abcd 0003 01020300"),
    ),
    (  # method bits interleave with class bits: 0xABC as an indication is type 0x2A7C
        Message(0xABC, Class.INDICATION, TID),
        h(f"2a7c 0000 {COOKIE}") + TID,
    ),
    (
        Message(Method.BINDING, Class.SUCCESS, TID, (Software("probe"), Fingerprint())),
        with_fingerprint(h(f"0101 000c {COOKIE}") + TID + h("8022 0005") + b"probe\x00\x00\x00"),
    ),
]


@pytest.mark.parametrize(("message", "data"), SIMPLE_CASES)
def test_encode(message: Message, data: bytes) -> None:
    assert encode_message(message) == data


@pytest.mark.parametrize(("message", "data"), SIMPLE_CASES)
def test_decode(message: Message, data: bytes) -> None:
    assert decode_message(data) == message
    assert stun.message_length(data[:20]) == len(data)


@pytest.mark.parametrize(("message", "data"), SIMPLE_CASES)
def test_decode_truncated_and_trailing(message: Message, data: bytes) -> None:
    for cut in range(len(data)):
        with pytest.raises(StunCodecError):
            decode_message(data[:cut])
    for extra in (b"\x00", b"\x00" * 4, data):
        with pytest.raises(StunCodecError):
            decode_message(data + extra)


# --- RFC 5769 test vectors -----------------------------------------------------------------
# Their padding is deliberately not zero (spaces), and MESSAGE-INTEGRITY is kept raw here.

RFC5769_REQUEST = h("""
    00010058 2112a442 b7e7a701 bc34d686 fa87dfae
    80220010 5354554e 20746573 7420636c 69656e74
    00240004 6e0001ff
    80290008 932ff9b1 51263b36
    00060009 6576746a 3a683676 59202020
    00080014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2
    80280004 e57a3bcf
""")
RFC5769_IPV4_RESPONSE = h("""
    0101003c 2112a442 b7e7a701 bc34d686 fa87dfae
    8022000b 74657374 20766563 746f7220
    00200008 0001a147 e112a643
    00080014 2b91f599 fd9e90c3 8c7489f9 2af9ba53 f06be7d7
    80280004 c07d4c96
""")
RFC5769_IPV6_RESPONSE = h("""
    01010048 2112a442 b7e7a701 bc34d686 fa87dfae
    8022000b 74657374 20766563 746f7220
    00200014 0002a147 0113a9fa a5d3f179 bc25f4b5 bed2b9d9
    00080014 a382954e 4be67bf1 1784c97c 8292c275 bfe3ed41
    80280004 c8fb0b4c
""")


def test_rfc5769_request() -> None:
    message = decode_message(RFC5769_REQUEST)
    assert (message.method, message.cls, message.transaction_id) == (1, Class.REQUEST, TID)
    assert message.find(Software) == Software("STUN test client")
    assert message.find(UnknownAttribute) == UnknownAttribute(0x0024, h("6e0001ff"))  # PRIORITY
    assert UnknownAttribute(0x0006, b"evtj:h6vY") in message.attributes  # USERNAME, unpadded
    assert message.attributes[-1] == Fingerprint()


@pytest.mark.parametrize(("data", "address"), [
    (RFC5769_IPV4_RESPONSE, "192.0.2.1"),
    (RFC5769_IPV6_RESPONSE, "2001:db8:1234:5678:11:2233:4455:6677"),
], ids=["ipv4", "ipv6"])
def test_rfc5769_responses(data: bytes, address: str) -> None:
    message = decode_message(data)
    assert message.cls == Class.SUCCESS and message.transaction_id == TID
    assert message.find(XorMappedAddress) == XorMappedAddress(ipaddress.ip_address(address), 32853)
    assert message.find(Software) == Software("test vector")  # its 12th byte is padding
    assert message.attributes[-1] == Fingerprint()


@pytest.mark.parametrize("data", [RFC5769_REQUEST, RFC5769_IPV4_RESPONSE, RFC5769_IPV6_RESPONSE],
                         ids=["request", "ipv4", "ipv6"])
def test_rfc5769_fingerprint_is_checked(data: bytes) -> None:
    broken = bytearray(data)
    broken[-1] ^= 0x01
    with pytest.raises(StunCodecError, match="FINGERPRINT"):
        decode_message(bytes(broken))
    body = bytearray(data)
    body[25] ^= 0x01  # one bit inside the first attribute's value
    with pytest.raises(StunCodecError, match="FINGERPRINT"):
        decode_message(bytes(body))


# --- malformed input -----------------------------------------------------------------------

HEAD = f"2112a442 {TID.hex()}"
MALFORMED: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("not STUN", b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"),
    ("wrong cookie", h("0001 0000 2112a443") + TID),
    ("leading bits set", h(f"c001 0000 {HEAD}")),
    ("length not a multiple of 4", h(f"0101 0002 {HEAD} 0000")),
    ("length beyond the data", h(f"0101 0008 {HEAD} 8022 0000")),
    ("truncated attribute header", h(f"0101 0004 {HEAD} 8022 0004")),
    ("attribute overruns", h(f"0101 0008 {HEAD} 8022 0005 61626364")),
    ("oversize", h(f"0101 fffc {HEAD}") + b"\x00" * 0xFFFC),
    ("xor address: unknown family", h(f"0101 000c {HEAD} 0020 0008 0003a147 e112a643")),
    ("xor address: short", h(f"0101 0008 {HEAD} 0020 0003 000100 00")),
    ("xor address: v4 family, v6 length", h(f"0101 0018 {HEAD} 0020 0014 0001a147") + bytes(16)),
    ("mapped address: empty", h(f"0101 0004 {HEAD} 0001 0000")),
    ("error code: short", h(f"0111 0004 {HEAD} 0009 0002 0000 0000")),
    ("error code: class 7", h(f"0111 0008 {HEAD} 0009 0004 00000701")),
    ("error code: number 100", h(f"0111 0008 {HEAD} 0009 0004 00000464")),
    ("realm: not UTF-8", h(f"0111 0008 {HEAD} 0014 0002 fffe 0000")),
    ("software: too long", h(f"0101 0300 {HEAD} 8022 02fc") + b"a" * 0x2FC),
    ("requested transport: wrong size", h(f"0003 0008 {HEAD} 0019 0002 1100 0000")),
    ("fingerprint: wrong size", h(f"0101 0008 {HEAD} 8028 0002 0000 0000")),
    ("fingerprint: not last", with_fingerprint(h(f"0101 0000 {HEAD}")) + h("8022 0000")),
    ("fingerprint: wrong value", h(f"0101 0008 {HEAD} 8028 0004 00000000")),
]


@pytest.mark.parametrize(("why", "data"), MALFORMED, ids=[w for w, _ in MALFORMED])
def test_malformed(why: str, data: bytes) -> None:
    with pytest.raises(StunCodecError):
        decode_message(data)


def test_codec_error_is_the_projects() -> None:
    assert issubclass(StunCodecError, CodecError) and issubclass(StunCodecError, ValueError)


def test_message_length_needs_a_header() -> None:
    with pytest.raises(StunCodecError):
        stun.message_length(b"\x00\x01\x00")
    with pytest.raises(StunCodecError):
        stun.message_length(b"\x16\x03\x01\x02\x00" + bytes(15))  # a TLS ClientHello


@pytest.mark.parametrize("bad", [
    Message(Method.BINDING, Class.SUCCESS, TID, (Fingerprint(), Software("x"))),
    Message(Method.BINDING, Class.ERROR, TID, (ErrorCode(200),)),
    Message(Method.BINDING, Class.SUCCESS, TID, (Software("é" * 400),)),
    Message(Method.BINDING, Class.SUCCESS, TID, (UnknownAttribute(0x8022, b"raw"),)),
    Message(Method.BINDING, Class.SUCCESS, TID,
            (MappedAddress(ipaddress.ip_address("192.0.2.1"), 70000),)),
])
def test_encode_refuses_what_it_could_not_decode(bad: Message) -> None:
    with pytest.raises(StunCodecError):
        encode_message(bad)


def test_message_checks_its_header_fields() -> None:
    with pytest.raises(StunCodecError):
        Message(Method.BINDING, Class.REQUEST, b"short")
    with pytest.raises(StunCodecError):
        Message(0x1000, Class.REQUEST, TID)


# --- builders ------------------------------------------------------------------------------


def test_requests_get_fresh_transaction_ids() -> None:
    ids = {stun.binding_request().transaction_id for _ in range(100)}
    assert len(ids) == 100
    allocate = decode_message(encode_message(stun.allocate_request()))
    assert allocate.method == Method.ALLOCATE
    assert allocate.find(RequestedTransport) == RequestedTransport(stun.TRANSPORT_UDP)


def test_responses_answer_their_request() -> None:
    request = stun.binding_request()
    other = stun.binding_request()
    success = decode_message(encode_message(
        stun.binding_success(request, ipaddress.ip_address("::1"), 5, software="mock")))
    assert stun.is_response_to(success, request) and not stun.is_response_to(success, other)
    assert success.attributes[-1] == Fingerprint()
    assert not stun.is_response_to(request, request)  # a request is no answer
    allocate = stun.allocate_request()
    error = stun.error_response(allocate, 401, "Unauthorized", realm="r", nonce="n")
    assert stun.is_response_to(decode_message(encode_message(error)), allocate)
    assert not stun.is_response_to(error, stun.Message(Method.BINDING, Class.REQUEST,
                                                         allocate.transaction_id))


# --- padding -------------------------------------------------------------------------------


def test_padding_is_comprehension_optional_and_unassigned() -> None:
    # 0x8000-0xFFFF: an agent that does not know it must ignore it (RFC 8489 section 14);
    # IANA's STUN attribute registry assigns nothing above 0xC071 in that range.
    assert stun.OPTIONAL_PADDING >= 0xC072
    assert stun.OPTIONAL_PADDING not in stun.ATTRIBUTE_TYPES.values()


def test_pad_a_binding_request_to_a_voice_frame() -> None:
    request = Message(Method.BINDING, Class.REQUEST, TID, (Fingerprint(),))
    padded = stun.pad(request, 160)
    data = encode_message(padded)
    assert len(data) == 160
    # header, padding (4 + 128 zeros), then FINGERPRINT over all of it
    assert data[20:24] == stun.OPTIONAL_PADDING.to_bytes(2, "big") + (128).to_bytes(2, "big")
    assert data[24:152] == bytes(128)
    assert data == with_fingerprint(h(f"0001 0084 {COOKIE}") + TID + data[20:152])
    assert decode_message(data) == padded
    assert padded.attributes == (UnknownAttribute(stun.OPTIONAL_PADDING, bytes(128)), Fingerprint())


def test_pad_without_fingerprint_appends() -> None:
    allocate = stun.allocate_request(TID)
    padded = stun.pad(allocate, 64)
    assert padded.attributes[0] == RequestedTransport(17)
    assert padded.attributes[1] == UnknownAttribute(stun.OPTIONAL_PADDING, bytes(64 - 28 - 4))
    assert len(encode_message(padded)) == 64


def test_pad_to_its_own_size_changes_nothing() -> None:
    request = Message(Method.BINDING, Class.REQUEST, TID)
    assert stun.pad(request, 20) is request
    assert len(encode_message(stun.pad(request, 24))) == 24  # an empty padding attribute


@pytest.mark.parametrize("size", [0, 19, 21, 22, 23, 26, 161, stun.MAX_MESSAGE_SIZE + 4])
def test_pad_refuses_sizes_stun_cannot_have(size: int) -> None:
    with pytest.raises(StunCodecError):
        stun.pad(Message(Method.BINDING, Class.REQUEST, TID), size)


def test_pad_up_to_the_largest_message() -> None:
    padded = stun.pad(Message(Method.BINDING, Class.REQUEST, TID, (Fingerprint(),)),
                      stun.MAX_MESSAGE_SIZE)
    assert len(encode_message(padded)) == stun.MAX_MESSAGE_SIZE


# --- properties ----------------------------------------------------------------------------

addresses = st.one_of(
    st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1)),
    st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1)),
)
ports = st.integers(0, 0xFFFF)
texts = st.text(max_size=60)
unknown_types = st.integers(0, 0xFFFF).filter(lambda t: t not in stun.ATTRIBUTE_TYPES.values())
attributes = st.one_of(
    st.builds(MappedAddress, addresses, ports),
    st.builds(XorMappedAddress, addresses, ports),
    st.builds(ErrorCode, st.integers(300, 699), texts),
    st.builds(Realm, texts),
    st.builds(Nonce, texts),
    st.builds(Software, texts),
    st.builds(RequestedTransport, st.integers(0, 255)),
    st.builds(UnknownAttribute, unknown_types, st.binary(max_size=40)),
)
messages = st.builds(
    lambda method, cls, tid, attrs, fp: Message(method, cls, tid,
                                                tuple(attrs) + ((Fingerprint(),) if fp else ())),
    st.integers(0, 0xFFF),
    st.sampled_from(Class),
    st.binary(min_size=12, max_size=12),
    st.lists(attributes, max_size=8),
    st.booleans(),
)


@given(messages)
@settings(max_examples=500)
def test_round_trip(message: Message) -> None:
    data = encode_message(message)
    assert len(data) % 4 == 0
    assert decode_message(data) == message


def _decode_or_codec_error(data: bytes) -> None:
    try:
        decode_message(data)
    except StunCodecError:
        pass  # the only exception decoding may raise; anything else fails the test


# Fuzzing budget: 100,000 random datagrams unless STUN_FUZZ_INPUTS says otherwise. Hypothesis
# costs about 1 ms per example whatever the example, so each example is a batch of 50 random
# blobs, each decoded three ways (shrinking still works: a failing batch shrinks to the one
# blob that fails). The test prints what it took.
FUZZ_INPUTS = int(os.environ.get("STUN_FUZZ_INPUTS", "100000"))
FUZZ_BATCH = 50



KNOWN_TYPES = sorted(stun.ATTRIBUTE_TYPES.values())


def framed(blob: bytes, attributes: bool) -> bytes:
    """Random bytes mostly die at the cookie check; this gives them a valid-looking header with
    a consistent length. With `attributes`, the rest is read as (type selector, length, value)
    triples: mostly the types the codec knows, with lengths that may be wrong, so every
    attribute decoder sees hostile values, not just the one-in-65536 lucky random type."""
    head, tid, rest = blob[:2].ljust(2, b"\x00"), blob[2:14].ljust(12, b"\x00"), blob[14:]
    body = bytearray()
    if not attributes:
        body += rest
    while attributes and len(rest) >= 2:
        selector, length, rest = rest[0], rest[1] % 32, rest[2:]
        kind = KNOWN_TYPES[selector % len(KNOWN_TYPES)] if selector < 200 else selector << 4
        value, rest = rest[:length], rest[length:]
        body += kind.to_bytes(2, "big") + length.to_bytes(2, "big") + value
        body += b"\x00" * (-len(body) % 4)
    body += b"\x00" * (-len(body) % 4)
    message_type = int.from_bytes(head, "big") & 0x3FFF
    return (message_type.to_bytes(2, "big") + len(body).to_bytes(2, "big")
            + bytes.fromhex(COOKIE) + tid + bytes(body))


class _Count:
    inputs = 0


@given(st.lists(st.binary(min_size=14, max_size=120), min_size=FUZZ_BATCH, max_size=FUZZ_BATCH))
@settings(max_examples=max(1, -(-FUZZ_INPUTS // (3 * FUZZ_BATCH))), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def _fuzz_random(batch: list[bytes]) -> None:
    for blob in batch:
        for data in (blob, framed(blob, False), framed(blob, True)):
            _Count.inputs += 1
            _decode_or_codec_error(data)


def test_random_bytes_raise_only_codec_errors() -> None:
    start = time.perf_counter()
    _Count.inputs = 0
    _fuzz_random()
    took = time.perf_counter() - start
    print(f"\nSTUN codec fuzz: {_Count.inputs:,} random datagrams in {took:.1f} s "
          f"({_Count.inputs / took:,.0f}/s; STUN_FUZZ_INPUTS={FUZZ_INPUTS})")
    assert _Count.inputs >= FUZZ_INPUTS


mutations = st.lists(
    st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from("xdi")), max_size=6)


@given(messages, mutations, st.integers(0, 8))
@settings(max_examples=1000, deadline=None)
def test_mutated_messages_raise_only_codec_errors(
    message: Message, edits: list[tuple[int, int, str]], cut: int
) -> None:
    data = bytearray(encode_message(message))
    for position, byte, how in edits:
        where = position % (len(data) + 1)
        if how == "x" and where < len(data):
            data[where] ^= byte or 1
        elif how == "d" and where < len(data):
            del data[where]
        else:
            data.insert(where, byte)
    _decode_or_codec_error(bytes(data[: len(data) - cut]))
