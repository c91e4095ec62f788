"""The probe-echo codec: every shape both ways, its documented layout, hostile bytes, TCP frames."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.errors import CodecError
from probe.wire import echo, stun
from probe.wire.echo import (
    Counters,
    DownloadStatus,
    EchoCodecError,
    EchoReply,
    EchoRequest,
    FrameType,
    Shape,
    TagMismatch,
)

SESSION = bytes.fromhex("0011223344556677")
V4 = (ipaddress.ip_address("192.0.2.1"), 32853)
V6 = (ipaddress.ip_address("2001:db8::1"), 40000)
KEY = b"a-shared-secret-of-the-team-0123"

# (shape, message, size, mapped): encoded, then decoded back; replies reuse a request's nonce.
CASES: list[tuple[Shape, EchoRequest | EchoReply, int, tuple[object, int] | None]] = []
for _shape in Shape:
    _least = echo.min_request_size(_shape)
    CASES += [
        (_shape, EchoRequest(SESSION, 0), 0, None),
        (_shape, EchoRequest(SESSION, 1, 1, _least, reply_size=_least), _least, None),
        (_shape, EchoRequest(SESSION, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFF), 1200, None),
        (_shape, EchoReply(SESSION, 7, 7, 7 * 1200, 6, 6 * 1200), 1200, V4),
        (_shape, EchoReply(SESSION, 0xFFFFFFFF, 1, 2, 3, 4), echo.smallest_reply(_shape), V6),
    ]
IDS = [f"{shape}-{type(m).__name__}-{size}" for shape, m, size, _ in CASES]


def encode(shape: Shape, message: EchoRequest | EchoReply, size: int,
           mapped: tuple[object, int] | None, key: bytes = echo.PUBLIC_KEY) -> bytes:
    if isinstance(message, EchoRequest):
        return echo.encode_request(message, shape, size, key)
    nonce = {Shape.STUN: b"t" * 12, Shape.WHATSAPP: b"t" * 12, Shape.TELEGRAM: b"q" * 8}.get(shape)
    return echo.encode_reply(message, shape, size, key, nonce=nonce,
                             mapped=mapped if shape is Shape.STUN else None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("shape", "message", "size", "mapped"), CASES, ids=IDS)
def test_round_trip(shape: Shape, message: EchoRequest | EchoReply, size: int,
                    mapped: tuple[object, int] | None) -> None:
    data = encode(shape, message, size, mapped)
    assert len(data) == (size or echo.min_request_size(shape))
    decoded = echo.decode(data, replies=isinstance(message, EchoReply))
    assert (decoded.shape, decoded.message, decoded.size) == (shape, message, len(data))


@pytest.mark.parametrize(("shape", "message", "size", "mapped"), CASES, ids=IDS)
def test_truncated_and_trailing(shape: Shape, message: EchoRequest | EchoReply, size: int,
                                mapped: tuple[object, int] | None) -> None:
    data = encode(shape, message, size, mapped)
    replies = isinstance(message, EchoReply)
    for cut in range(len(data)):
        with pytest.raises(EchoCodecError):
            echo.decode(data[:cut], replies=replies)
    for extra in (b"\x00", b"\x00" * 4, data):
        with pytest.raises(EchoCodecError):
            echo.decode(data + extra, replies=replies)


@pytest.mark.parametrize(("shape", "message", "size", "mapped"), CASES, ids=IDS)
def test_direction_and_key(shape: Shape, message: EchoRequest | EchoReply, size: int,
                           mapped: tuple[object, int] | None) -> None:
    """A request is never taken for a reply (so reflectors never answer each other), and a
    datagram tagged with one key is refused under another, as a tag mismatch."""
    data = encode(shape, message, size, mapped, key=KEY)
    replies = isinstance(message, EchoReply)
    with pytest.raises(EchoCodecError):
        echo.decode(data, (KEY,), replies=not replies)
    with pytest.raises(TagMismatch):
        echo.decode(data, (echo.PUBLIC_KEY, b"another-secret-entirely"), replies=replies)
    decoded = echo.decode(data, (b"an old secret being rotated", KEY), replies=replies)
    assert decoded.key == KEY and decoded.message == message
    assert KEY not in repr(decoded).encode()  # never printed into a log by accident


# --- the documented layout, rebuilt here independently of the codec ------------------------


def unmask(nonce: bytes, data: bytes) -> bytes:
    stream = hashlib.shake_128(b"probe-echo/1 " + nonce).digest(len(data))
    return bytes(a ^ b for a, b in zip(data, stream, strict=True))


SHAPE_ID = {Shape.STUN: 1, Shape.WHATSAPP: 2, Shape.TELEGRAM: 3, Shape.RTP: 4, Shape.RANDOM: 5}


def check_request_body(plain: bytes, shape: Shape, size: int, request: EchoRequest,
                       key: bytes) -> None:
    fields = struct.pack("!BBH8sIIIH", 1, 0, size, request.session, request.seq,
                         request.sent_packets, request.sent_bytes, request.reply_size)
    tag = hmac.new(key, bytes([SHAPE_ID[shape]]) + fields, "sha256").digest()[:8]
    assert plain[:34] == fields + tag
    assert plain[34:] == bytes(len(plain) - 34)  # the padding, masked zeros


REQUEST = EchoRequest(SESSION, 70000, 3, 900, reply_size=100)


def test_layout_random() -> None:
    data = echo.encode_request(REQUEST, Shape.RANDOM, 300, KEY, nonce=b"n" * 16)
    assert data[:16] == b"n" * 16
    check_request_body(unmask(data[:16], data[16:]), Shape.RANDOM, 300, REQUEST, KEY)


def test_layout_rtp() -> None:
    data = echo.encode_request(REQUEST, Shape.RTP, 300, KEY)
    v_p_x_cc, m_pt, seq, timestamp = struct.unpack("!BBHI", data[:8])
    assert (v_p_x_cc, m_pt, seq, timestamp) == (0x80, 111, 70000 % 65536, 70000 * 960)
    check_request_body(unmask(data[:12], data[12:]), Shape.RTP, 300, REQUEST, KEY)
    # One SSRC per session and direction, as two RTP senders of one call have.
    again = echo.encode_request(EchoRequest(SESSION, 1), Shape.RTP)
    reply = echo.encode_reply(EchoReply(SESSION, 1, 1, 1, 0, 0), Shape.RTP, 52)
    other = echo.encode_request(EchoRequest(b"x" * 8, 1), Shape.RTP)
    assert data[8:12] == again[8:12] != reply[8:12]
    assert other[8:12] != data[8:12]


def test_layout_telegram() -> None:
    """libtgvoip's reflector framing: peer tag, 12 x 0xFF, special id -2, query id."""
    data = echo.encode_request(REQUEST, Shape.TELEGRAM, 300, KEY, nonce=b"q" * 8)
    assert data[16:28] == b"\xff" * 12 and struct.unpack("<i", data[28:32]) == (-2,)
    assert data[32:40] == b"q" * 8
    check_request_body(unmask(b"q" * 8, data[40:]), Shape.TELEGRAM, 300, REQUEST, KEY)
    reply = echo.encode_reply(EchoReply(SESSION, 1, 1, 1, 0, 0), Shape.TELEGRAM, 80,
                              nonce=b"q" * 8)
    assert struct.unpack("<I", reply[28:32]) == (0xC01572C7,) and reply[32:40] == b"q" * 8
    assert data[:15] == reply[:15] and data[15] ^ reply[15] == 1  # the two sides' peer tags
    assert data[15] & 1 == 0


@pytest.mark.parametrize("shape", [Shape.STUN, Shape.WHATSAPP])
def test_stun_framed_shapes_decode_as_stun(shape: Shape) -> None:
    data = echo.encode_request(REQUEST, shape, 300, KEY, nonce=b"t" * 12)
    message = stun.decode_message(data)  # FINGERPRINT (stun) checked by the STUN codec itself
    assert message.transaction_id == b"t" * 12 and message.cls == stun.Class.REQUEST
    if shape is Shape.STUN:
        assert message.method == stun.Method.BINDING
        assert message.attributes[-1] == stun.Fingerprint()
        code = echo.ECHO_ATTRIBUTE
        assert code & 0x8000  # comprehension-optional: any STUN server answers it as Binding
    else:
        assert int.from_bytes(data[:2], "big") == 0x0801  # nDPI: 0x0800-0x0802 is WhatsApp
        code = echo.WHATSAPP_ATTRIBUTE
    value = next(a.value for a in message.attributes
                 if isinstance(a, stun.UnknownAttribute) and a.type == code)
    check_request_body(unmask(b"t" * 12, value), shape, 300, REQUEST, KEY)


@pytest.mark.parametrize("mapped", [V4, V6, None], ids=["v4", "v6", "none"])
def test_stun_reply_is_a_binding_success(mapped: tuple[object, int] | None) -> None:
    size = echo.smallest_reply(Shape.STUN, None if mapped is None else mapped[0].version)  # type: ignore[attr-defined]
    data = echo.encode_reply(EchoReply(SESSION, 1, 1, 1, 0, 0), Shape.STUN, size,
                             nonce=b"t" * 12, mapped=mapped)  # type: ignore[arg-type]
    message = stun.decode_message(data)
    assert (message.cls, message.transaction_id) == (stun.Class.SUCCESS, b"t" * 12)
    found = message.find(stun.XorMappedAddress)
    assert found == (None if mapped is None else stun.XorMappedAddress(*mapped))  # type: ignore[arg-type]
    whatsapp = echo.encode_reply(EchoReply(SESSION, 1, 1, 1, 0, 0), Shape.WHATSAPP, 64,
                                 nonce=b"t" * 12)
    assert int.from_bytes(whatsapp[:2], "big") == 0x0802


def test_random_shape_has_no_fixed_byte() -> None:
    datagrams = [echo.encode_request(REQUEST, Shape.RANDOM, 120) for _ in range(64)]
    for position in range(120):
        assert len({d[position] for d in datagrams}) > 1, f"byte {position} never changes"


@pytest.mark.parametrize("shape", list(Shape))
def test_every_size_from_the_floor_is_exact(shape: Shape) -> None:
    step = 4 if shape in (Shape.STUN, Shape.WHATSAPP) else 1
    floor = {Shape.STUN: 68, Shape.WHATSAPP: 60, Shape.TELEGRAM: 74, Shape.RTP: 46,
             Shape.RANDOM: 50}[shape]
    for size in range(floor, floor + 40, step):
        assert len(echo.encode_request(EchoRequest(SESSION, 0), shape, size)) == size
    with pytest.raises(EchoCodecError):
        echo.encode_request(EchoRequest(SESSION, 0), shape, floor - step)
    if step == 4:
        with pytest.raises(EchoCodecError, match="multiple of 4"):
            echo.encode_request(EchoRequest(SESSION, 0), shape, floor + 2)


# reply_size(shape, request size, wanted, mapped family) -> size or None
REPLY_SIZES = [
    (Shape.RANDOM, 56, 0, 6, 56),
    (Shape.RANDOM, 55, 0, 6, None),  # the smallest reply would not fit: no answer
    (Shape.RANDOM, 1200, 0, 6, 1200),
    (Shape.RANDOM, 1200, 100, 6, 100),
    (Shape.RANDOM, 1200, 10, 6, 56),  # never below the smallest reply
    (Shape.RANDOM, 100, 1200, 6, 100),  # never above the request
    (Shape.STUN, 96, 0, 6, 96),
    (Shape.STUN, 92, 0, 6, None),
    (Shape.STUN, 84, 0, 4, 84),  # an IPv4 client's mapped address is shorter
    (Shape.STUN, 1200, 101, 6, 100),  # rounded down to STUN's 4-byte grain
    (Shape.WHATSAPP, 64, 0, None, 64),
    (Shape.TELEGRAM, 79, 0, None, None),
]


@pytest.mark.parametrize(("shape", "size", "wanted", "family", "expected"), REPLY_SIZES)
def test_reply_size(shape: Shape, size: int, wanted: int, family: int | None,
                    expected: int | None) -> None:
    assert echo.reply_size(shape, size, wanted, family) == expected


@pytest.mark.parametrize(("values", "kind"), [
    ({"session": b"short"}, EchoRequest), ({"seq": -1}, EchoRequest),
    ({"sent_bytes": 2**32}, EchoRequest), ({"reply_size": 65536}, EchoRequest),
    ({"received_packets": 2**32}, EchoReply),
])
def test_values_out_of_range(values: dict[str, object], kind: type) -> None:
    base: dict[str, object] = {"session": SESSION, "seq": 0}
    if kind is EchoReply:
        base |= {"received_packets": 0, "received_bytes": 0, "sent_packets": 0, "sent_bytes": 0}
    with pytest.raises(EchoCodecError):
        kind(**(base | values))


def test_replies_need_the_request_nonce() -> None:
    for shape in (Shape.STUN, Shape.WHATSAPP, Shape.TELEGRAM):
        with pytest.raises(EchoCodecError, match="nonce"):
            echo.encode_reply(EchoReply(SESSION, 1, 1, 1, 0, 0), shape, 200)


def test_plain_stun_is_not_an_echo() -> None:
    plain = stun.encode_message(stun.binding_request())
    assert not echo.is_echo_stun(stun.decode_message(plain))
    with pytest.raises(EchoCodecError):
        echo.decode(plain)
    assert echo.is_echo_stun(stun.decode_message(echo.encode_request(REQUEST, Shape.STUN)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_hostile_bytes_raise_only_the_codec_error(data: bytes) -> None:
    for replies in (False, True):
        with pytest.raises(CodecError):
            echo.decode(data, replies=replies)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(list(Shape)), st.integers(0, 299), st.integers(0, 255))
def test_any_flipped_byte_is_refused(shape: Shape, position: int, flip: int) -> None:
    """A byte changed anywhere in the body or a length makes the datagram undecodable
    (padding is not covered by the tag: only its length is, by the size field)."""
    data = bytearray(echo.encode_request(REQUEST, shape, 300))
    decoded = echo.decode(bytes(data))
    data[position] ^= flip or 1
    try:
        again = echo.decode(bytes(data))
    except EchoCodecError:
        return
    assert again.message == decoded.message  # only padding or framing the tag leaves out


# --- TCP frames ----------------------------------------------------------------------------

FRAMES: list[tuple[bytes, FrameType, bytes]] = [
    (echo.hello(SESSION), FrameType.HELLO, SESSION + hmac.new(
        echo.PUBLIC_KEY, b"\x00tcp" + SESSION, "sha256").digest()[:8]),
    (echo.echo_request(9, 30), FrameType.ECHO, struct.pack("!I", 9) + bytes(23)),
    (echo.download_request(65536, 1200), FrameType.DOWNLOAD, struct.pack("!IH", 65536, 1200)),
    (echo.encode_frame(FrameType.DATA, b"xyz"), FrameType.DATA, b"xyz"),
    (echo.report_request(), FrameType.REPORT, bytes(16)),
    (echo.encode_frame(FrameType.HELLO_OK), FrameType.HELLO_OK, b""),
    (echo.report_reply(Counters(1, 2, 3, 4)), FrameType.REPORT_REPLY,
     struct.pack("!IIII", 1, 2, 3, 4)),
    (echo.download_done(DownloadStatus.REFUSED, Counters(5, 6, 7, 8)), FrameType.DOWNLOAD_DONE,
     b"\x01" + struct.pack("!IIII", 5, 6, 7, 8)),
]


@pytest.mark.parametrize(("data", "kind", "payload"), FRAMES, ids=[f[1].name for f in FRAMES])
def test_frames(data: bytes, kind: FrameType, payload: bytes) -> None:
    assert data == bytes([kind]) + len(payload).to_bytes(2, "big") + payload
    whole = echo.FrameReader().feed(data + data)
    assert whole == [echo.Frame(kind, payload)] * 2
    reader = echo.FrameReader()  # byte by byte, as TLS records may cut them
    pieces = [frame for i in range(len(data)) for frame in reader.feed(data[i : i + 1])]
    assert pieces == [echo.Frame(kind, payload)] and reader.pending == 0


def test_frame_payloads() -> None:
    request = echo.echo_request(77, 100)
    reply = echo.echo_reply(request[3:], Counters(100, 1, 0, 0))
    assert len(reply) == len(request)
    assert echo.parse_echo_reply(reply[3:]) == (77, Counters(100, 1, 0, 0))
    assert echo.parse_hello(echo.hello(SESSION, KEY)[3:], (echo.PUBLIC_KEY, KEY)) == (SESSION, KEY)
    with pytest.raises(TagMismatch):
        echo.parse_hello(echo.hello(SESSION, KEY)[3:], (echo.PUBLIC_KEY,))
    assert echo.parse_download(echo.download_request(5, 2)[3:]) == (5, 2)
    done = echo.download_done(DownloadStatus.SENT, Counters(1, 1, 9, 9))
    assert echo.parse_download_done(done[3:]) == (DownloadStatus.SENT, Counters(1, 1, 9, 9))


@pytest.mark.parametrize(("parse", "payload"), [
    (echo.parse_echo, bytes(19)),  # no room for the reply's counters
    (echo.parse_echo_reply, bytes(19)),
    (echo.parse_download, bytes(5)),
    (echo.parse_download, struct.pack("!IH", 10, 0)),
    (echo.parse_download_done, b"\x02" + bytes(16)),
    (echo.parse_counters, bytes(15)),
    (lambda p: echo.parse_hello(p, (echo.PUBLIC_KEY,)), bytes(15)),
])
def test_frame_payloads_refused(parse: object, payload: bytes) -> None:
    with pytest.raises(EchoCodecError):
        parse(payload)  # type: ignore[operator]


def test_frame_encoders_refuse() -> None:
    with pytest.raises(EchoCodecError):
        echo.echo_request(1, 22)
    with pytest.raises(EchoCodecError):
        echo.download_request(1, 0)
    with pytest.raises(EchoCodecError):
        echo.encode_frame(FrameType.DATA, bytes(65536))


def test_unknown_frame_type() -> None:
    with pytest.raises(EchoCodecError, match="unknown frame type"):
        echo.FrameReader().feed(b"\x16\x03\x01\x00\x05hello")  # a TLS record where frames go
