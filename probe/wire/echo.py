"""Probe-echo datagrams and TCP echo frames of `probe reflect`: bytes <-> frozen values.

Strategy: every probe-echo datagram carries the same small *body*, framed in one of five
*shapes*, so one flow can be sent looking like STUN, RTP, noise or a platform's call packets
while the fields that measure it stay the same. The body (network byte order):

    request  version=1 | kind=0 | size(2) | session(8) | seq(4) | sent packets(4)
             | sent bytes(4) | reply size(2) | tag(8)                           34 bytes
    reply    version=1 | kind=1 | size(2) | session(8) | seq(4) | received packets(4)
             | received bytes(4) | sent packets(4) | sent bytes(4) | tag(8)      40 bytes

`size` is the whole datagram's, so a datagram cut short or padded on the way fails to decode.

`tag` is HMAC-SHA256 over the shape's id (one byte: stun 1, whatsapp 2, telegram 3, rtp 4,
random 5) and the fields before it, truncated to 8 bytes, keyed with a reflector's shared secret
(its `--token-file`) or, without one, with the public `PUBLIC_KEY`: then it is only a checksum
that keeps junk from passing for a datagram of ours. The body and the padding after it are
xor'ed with SHAKE-128(b"probe-echo/1 " + nonce), the nonce being the datagram's transaction id
(stun, whatsapp), query id (telegram), 12-byte header (rtp) or 16-byte prefix (random), so
nothing of it is plaintext: the mask hides structure, not secrets
(anyone who reads this file can remove it). Counters are modulo 2**32. A reflector keeps its
counters per session and local port, whatever the shape: the probe draws a new session for each
flow it wants measured apart (each shape, each port).

The shapes, and the public description each follows:

    stun      a Binding request (RFC 8489) with the body in the comprehension-optional attribute
              ECHO_ATTRIBUTE and a FINGERPRINT; the reply is a Binding success response with
              XOR-MAPPED-ADDRESS, the body, FINGERPRINT. Decodes with probe/wire/stun.py.
    whatsapp  a STUN-framed message of type 0x0801 (reply 0x0802) with the body in attribute
              0x4000: nDPI's stun.c (2024) labels messages of type 0x0800-0x0802 carrying the
              magic cookie, and attributes 0x4000-0x4007, as WhatsApp calls. Which of the three
              types is a request is not public; the choice here is ours. Decodes as STUN too.
    telegram  the framing of libtgvoip's UDP reflector special packets (its MockReflector,
              and nDPI's telegram.c which keys on twelve 0xFF bytes): a 16-byte peer tag,
              12 bytes 0xFF, a 32-bit little-endian id (-2, "self info" request; the reply
              uses the 0xc01572c7 constructor of the self-info answer), a 64-bit query id the
              reply repeats, then our body. The two sides' tags differ in the low bit of byte
              15, as in libtgvoip. nDPI looks for it on UDP ports 500-600.
    rtp       an RFC 3550 header (V=2, no padding/extension/CSRC, PT 111, Opus's usual dynamic
              number in WebRTC; seq = seq mod 2**16; timestamp = seq * 960, 20 ms at 48 kHz;
              SSRC from the session, one per direction), then the body as an opaque payload.
    random    16 random bytes, then the body: no byte of the datagram is fixed.

Sizes: a reply is never larger than its request. The smallest reply of a shape is
`min_request_size(shape)` (an IPv6 XOR-MAPPED-ADDRESS counted for stun), so the probe pads its
requests to at least that; a smaller one is answered only if its reply still fits (stun from an
IPv4 client: 84 bytes), else ignored. `reply_size` is the rule a reflector
uses: the size the request asked for, never more than the request's own, rounded down to 4 for
the STUN-framed shapes. Requests and replies differ in `kind` and framing, so a reply is never
taken for a request: two reflectors cannot be made to answer each other.

TCP (after TLS) uses frames `type(1) | length(2) | payload`, read by `FrameReader`; the frame
types are in `FrameType` and the functions below build and parse each payload. Counters there
are frames and frame bytes (header included) seen on the TLS stream, not TCP segments.

Decoders trust nothing and raise `EchoCodecError` (a `CodecError`), never anything else. No
sockets and no clock; the only side effect is `os.urandom` for nonces not given by the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from probe.errors import CodecError
from probe.wire import stun
from probe.wire.flow import Answer

__all__ = [
    "ECHO_ATTRIBUTE",
    "FRAME_HEADER",
    "MAX_FRAME_PAYLOAD",
    "PUBLIC_KEY",
    "SESSION_SIZE",
    "WHATSAPP_ATTRIBUTE",
    "Counters",
    "Decoded",
    "DownloadStatus",
    "EchoCodecError",
    "EchoFlow",
    "EchoReply",
    "EchoRequest",
    "Frame",
    "FrameReader",
    "FrameType",
    "Shape",
    "TagMismatch",
    "decode",
    "decode_stun",
    "download_done",
    "download_request",
    "echo_reply",
    "echo_request",
    "encode_frame",
    "encode_reply",
    "encode_request",
    "hello",
    "is_echo_stun",
    "min_request_size",
    "new_session",
    "parse_counters",
    "parse_download",
    "parse_download_done",
    "parse_echo",
    "parse_echo_reply",
    "parse_hello",
    "reply_size",
    "report_reply",
    "report_request",
    "smallest_reply",
]

VERSION = 1
SESSION_SIZE = 8
TAG_SIZE = 8
PUBLIC_KEY = b"probe-reflect/1 public"  # the tag key of a reflector without a token
MAX_DATAGRAM = 65507  # the largest UDP payload over IPv4
ECHO_ATTRIBUTE = 0xC0DE  # RFC 8489 section 18.3: 0xC000-0xFFFF is comprehension-optional
WHATSAPP_ATTRIBUTE = 0x4000  # nDPI stun.c: 0x4000-0x4007 seen only in WhatsApp calls
WHATSAPP_REQUEST = 0x201  # message type 0x0801: the method bits of a "request" class type
WHATSAPP_REPLY = 0x202  # message type 0x0802

_KIND_REQUEST, _KIND_REPLY = 0, 1
_REQUEST = struct.Struct("!BBH8sIIIH")  # version, kind, size, session, seq, packets, bytes,
_REPLY = struct.Struct("!BBH8sIIIII")  # reply size / rx packets, rx bytes, tx packets, tx bytes
REQUEST_BODY = _REQUEST.size + TAG_SIZE  # 34
REPLY_BODY = _REPLY.size + TAG_SIZE  # 40

_U32 = 0xFFFFFFFF
_RTP_PT = 111
_RTP_SAMPLES = 960  # 20 ms at 48 kHz, one Opus frame
_TG_FILL = b"\xff" * 12
_TG_SELF_INFO = struct.pack("<i", -2)  # libtgvoip: special id -2 asks the reflector "self info"
_TG_SELF_INFO_REPLY = struct.pack("<I", 0xC01572C7)  # its answer's constructor
_TG_HEAD = 16 + 12 + 4 + 8  # peer tag, 0xFF fill, id, query id


class EchoCodecError(CodecError):
    """Bytes that are not a probe-echo datagram or frame, or values that cannot be encoded."""


class TagMismatch(EchoCodecError):
    """A well-formed echo whose tag no key makes: another reflector's, or a wrong token."""


class Shape(StrEnum):
    STUN = "stun"
    WHATSAPP = "whatsapp"
    TELEGRAM = "telegram"
    RTP = "rtp"
    RANDOM = "random"


_SHAPE_IDS = {shape: number for number, shape in enumerate(Shape, start=1)}
_STUN_FRAMED = (Shape.STUN, Shape.WHATSAPP)


def _check_u32(value: int, what: str) -> None:
    if not 0 <= value <= _U32:
        raise EchoCodecError(f"{what} {value} does not fit in 32 bits")


@dataclass(frozen=True, slots=True)
class EchoRequest:
    """What the probe says in each datagram: its flow, this datagram's number, what it sent."""

    session: bytes  # 8 random bytes, one per flow: the reflector's counters are kept per session
    seq: int
    sent_packets: int = 0  # datagrams of this session sent so far, this one included
    sent_bytes: int = 0  # their UDP payload bytes
    reply_size: int = 0  # the reply's size; 0: as large as this request

    def __post_init__(self) -> None:
        if len(self.session) != SESSION_SIZE:
            raise EchoCodecError(f"a session is {SESSION_SIZE} bytes")
        for name in ("seq", "sent_packets", "sent_bytes"):
            _check_u32(getattr(self, name), name)
        if not 0 <= self.reply_size <= 0xFFFF:
            raise EchoCodecError(f"reply size {self.reply_size} out of range")


@dataclass(frozen=True, slots=True)
class EchoReply:
    """The reflector's answer: the datagram's number and its own counters for the session."""

    session: bytes
    seq: int
    received_packets: int  # datagrams of this session received, the answered one included
    received_bytes: int
    sent_packets: int  # replies sent in this session before this one
    sent_bytes: int

    def __post_init__(self) -> None:
        if len(self.session) != SESSION_SIZE:
            raise EchoCodecError(f"a session is {SESSION_SIZE} bytes")
        for name in ("seq", "received_packets", "received_bytes", "sent_packets", "sent_bytes"):
            _check_u32(getattr(self, name), name)


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded datagram: its shape, its body, and what a reply to it must reuse."""

    shape: Shape
    message: EchoRequest | EchoReply
    nonce: bytes  # STUN transaction id / Telegram query id (a reply repeats it); else its own
    size: int
    key: bytes = field(repr=False, default=PUBLIC_KEY)  # the key whose tag matched


def new_session() -> bytes:
    return os.urandom(SESSION_SIZE)


# --- body, tag and mask --------------------------------------------------------------------


def _tag(key: bytes, domain: bytes, fields: bytes) -> bytes:
    return hmac.digest(key, domain + fields, "sha256")[:TAG_SIZE]


def _body(message: EchoRequest | EchoReply, shape: Shape, size: int, key: bytes) -> bytes:
    if isinstance(message, EchoRequest):
        fields = _REQUEST.pack(VERSION, _KIND_REQUEST, size, message.session, message.seq,
                               message.sent_packets, message.sent_bytes, message.reply_size)
    else:
        fields = _REPLY.pack(VERSION, _KIND_REPLY, size, message.session, message.seq,
                             message.received_packets, message.received_bytes,
                             message.sent_packets, message.sent_bytes)
    return fields + _tag(key, bytes([_SHAPE_IDS[shape]]), fields)


def _parse_body(
    plain: bytes, shape: Shape, kind: int, size: int, keys: Sequence[bytes]
) -> tuple[EchoRequest | EchoReply, bytes]:
    layout = _REQUEST if kind == _KIND_REQUEST else _REPLY
    if len(plain) < layout.size + TAG_SIZE:
        raise EchoCodecError(f"{len(plain)} bytes: too short for a {shape} echo body")
    if plain[0] != VERSION or plain[1] != kind:
        raise EchoCodecError(f"not a version {VERSION} echo {('request', 'reply')[kind]}")
    fields = plain[: layout.size]
    tag = plain[layout.size : layout.size + TAG_SIZE]
    domain = bytes([_SHAPE_IDS[shape]])
    for key in keys:
        if hmac.compare_digest(_tag(key, domain, fields), tag):
            break
    else:
        raise TagMismatch("the tag matches no key")
    values = layout.unpack(fields)
    if values[2] != size:
        raise EchoCodecError(f"{size} bytes, but the datagram says {values[2]}")
    values = values[3:]
    if kind == _KIND_REQUEST:
        return EchoRequest(*values), key
    return EchoReply(*values), key


def _keystream(nonce: bytes, size: int) -> bytes:
    return hashlib.shake_128(b"probe-echo/1 " + nonce).digest(size)


def _mask(nonce: bytes, data: bytes) -> bytes:
    # One integer xor, not a byte loop (as stun._xor_address): this runs for every datagram.
    size = len(data)
    if not size:
        return b""
    stream = int.from_bytes(_keystream(nonce, size), "big")
    return (int.from_bytes(data, "big") ^ stream).to_bytes(size, "big")


def _masked_body(body: bytes, nonce: bytes, room: int) -> bytes:
    """The body and `room - len(body)` bytes of padding, masked together."""
    if room < len(body):
        raise EchoCodecError(f"no room for a {len(body)}-byte body in {room} bytes")
    return _mask(nonce, body + bytes(room - len(body)))


def _session_ids(session: bytes) -> bytes:
    """Per-session constants of the framing: two RTP SSRCs, a Telegram peer tag."""
    return hashlib.shake_128(b"probe-echo/1 ids " + session).digest(16)


# --- sizes ---------------------------------------------------------------------------------


def _overhead(shape: Shape, reply: bool, mapped_version: int | None) -> int:
    if shape is Shape.STUN:
        mapped = {None: 0, 4: 12, 6: 24}[mapped_version] if reply else 0
        return stun.HEADER_SIZE + 4 + 8 + mapped  # header, ECHO attribute header, FINGERPRINT
    if shape is Shape.WHATSAPP:
        return stun.HEADER_SIZE + 4
    if shape is Shape.TELEGRAM:
        return _TG_HEAD
    if shape is Shape.RTP:
        return 12
    return 16


def _granule(shape: Shape) -> int:
    return 4 if shape in _STUN_FRAMED else 1


def _round_up(size: int, granule: int) -> int:
    return -(-size // granule) * granule


def smallest_reply(shape: Shape, mapped_version: int | None = 6) -> int:
    """The size of the smallest reply in this shape (stun: with an IPv4/IPv6/no mapped address)."""
    return _overhead(shape, True, mapped_version) + _round_up(REPLY_BODY, _granule(shape))


def min_request_size(shape: Shape) -> int:
    """The smallest request a reflector answers in this shape, whatever the client's family."""
    return smallest_reply(shape, 6)


def reply_size(shape: Shape, request_size: int, wanted: int = 0,
               mapped_version: int | None = 6) -> int | None:
    """How large the reply to a request of `request_size` bytes asking for `wanted` (0: the
    same) is: never above the request; None when even the smallest reply would be larger."""
    smallest = smallest_reply(shape, mapped_version)
    target = request_size if wanted == 0 else min(request_size, max(wanted, smallest))
    target -= target % _granule(shape)
    return target if target >= smallest else None


# --- encoding ------------------------------------------------------------------------------


def encode_request(request: EchoRequest, shape: Shape, size: int = 0, key: bytes = PUBLIC_KEY,
                   nonce: bytes | None = None) -> bytes:
    """A request datagram of exactly `size` bytes (0: `min_request_size(shape)`).

    Sizes below `min_request_size` are allowed down to what the body needs, but a reflector
    does not answer them. `nonce` (tests only): the transaction id (12 bytes, STUN-framed),
    query id (8, telegram) or prefix (16, random); rtp takes none."""
    size = size or min_request_size(shape)
    floor = _overhead(shape, False, None) + _round_up(REQUEST_BODY, _granule(shape))
    if not floor <= size <= MAX_DATAGRAM:
        raise EchoCodecError(f"a {shape} request is {floor} to {MAX_DATAGRAM} bytes, not {size}")
    if size % _granule(shape):
        raise EchoCodecError(f"a {shape} datagram's size is a multiple of 4, not {size}")
    return _frame(_body(request, shape, size, key), shape, size, False, nonce, request.session,
                  request.seq, None)


def encode_reply(reply: EchoReply, shape: Shape, size: int, key: bytes = PUBLIC_KEY,
                 nonce: bytes | None = None,
                 mapped: tuple[stun.IPAddress, int] | None = None) -> bytes:
    """A reply datagram of exactly `size` bytes (see `reply_size`). STUN-framed and telegram
    replies take the request's `nonce` (transaction id, query id); stun adds `mapped`, the
    client's address and port, as XOR-MAPPED-ADDRESS."""
    version = None if mapped is None else mapped[0].version
    floor = smallest_reply(shape, version if shape is Shape.STUN else 6)
    if not floor <= size <= MAX_DATAGRAM or size % _granule(shape):
        raise EchoCodecError(f"a {shape} reply cannot be {size} bytes")
    if shape in (*_STUN_FRAMED, Shape.TELEGRAM) and nonce is None:
        raise EchoCodecError(f"a {shape} reply repeats its request's nonce")
    return _frame(_body(reply, shape, size, key), shape, size, True, nonce, reply.session, reply.seq,
                  mapped)


def _frame(body: bytes, shape: Shape, size: int, reply: bool, nonce: bytes | None,
           session: bytes, seq: int, mapped: tuple[stun.IPAddress, int] | None) -> bytes:
    room = size - _overhead(shape, reply, None if mapped is None else mapped[0].version)
    if shape in _STUN_FRAMED:
        tid = nonce if nonce is not None else stun.new_transaction_id()
        attributes: list[stun.Attribute] = []
        method: int
        if shape is Shape.STUN:
            method = stun.Method.BINDING
            cls = stun.Class.SUCCESS if reply else stun.Class.REQUEST
            if mapped is not None:
                attributes.append(stun.XorMappedAddress(*mapped))
            attributes.append(stun.UnknownAttribute(ECHO_ATTRIBUTE, _masked_body(body, tid, room)))
            attributes.append(stun.Fingerprint())
        else:
            method, cls = (WHATSAPP_REPLY if reply else WHATSAPP_REQUEST), stun.Class.REQUEST
            attributes.append(
                stun.UnknownAttribute(WHATSAPP_ATTRIBUTE, _masked_body(body, tid, room)))
        return stun.encode_message(stun.Message(method, cls, tid, tuple(attributes)))
    if shape is Shape.TELEGRAM:
        query = nonce if nonce is not None else os.urandom(8)
        if len(query) != 8:
            raise EchoCodecError("a telegram query id is 8 bytes")
        peer = bytearray(_session_ids(session))
        peer[15] = (peer[15] | 1) if reply else (peer[15] & 0xFE)
        head = bytes(peer) + _TG_FILL + (_TG_SELF_INFO_REPLY if reply else _TG_SELF_INFO) + query
        return head + _masked_body(body, query, room)
    if shape is Shape.RTP:
        ids = _session_ids(session)
        ssrc = ids[4:8] if reply else ids[0:4]
        header = struct.pack("!BBHI4s", 0x80, _RTP_PT, seq & 0xFFFF,
                             (seq * _RTP_SAMPLES) & _U32, ssrc)
        return header + _masked_body(body, header, room)
    prefix = nonce if nonce is not None else os.urandom(16)
    if len(prefix) != 16:
        raise EchoCodecError("a random-shape nonce is 16 bytes")
    return prefix + _masked_body(body, prefix, room)


# --- decoding ------------------------------------------------------------------------------


def is_echo_stun(message: stun.Message) -> bool:
    """Whether a STUN message claims to be one of ours (then it is never plain STUN)."""
    if message.method in (WHATSAPP_REQUEST, WHATSAPP_REPLY):
        return True
    return any(isinstance(a, stun.UnknownAttribute) and a.type == ECHO_ATTRIBUTE
               for a in message.attributes)


def _attribute(message: stun.Message, code: int) -> bytes:
    for attribute in message.attributes:
        if isinstance(attribute, stun.UnknownAttribute) and attribute.type == code:
            return attribute.value
    raise EchoCodecError(f"no attribute {code:#06x}")


def decode_stun(message: stun.Message, size: int, keys: Sequence[bytes]) -> Decoded:
    """The echo inside an already decoded STUN message of `size` bytes (stun or whatsapp)."""
    if message.method == stun.Method.BINDING and message.cls in (stun.Class.REQUEST,
                                                                  stun.Class.SUCCESS):
        shape, code = Shape.STUN, ECHO_ATTRIBUTE
        kind = _KIND_REQUEST if message.cls == stun.Class.REQUEST else _KIND_REPLY
    elif message.cls == stun.Class.REQUEST and message.method in (WHATSAPP_REQUEST,
                                                                   WHATSAPP_REPLY):
        shape, code = Shape.WHATSAPP, WHATSAPP_ATTRIBUTE
        kind = _KIND_REQUEST if message.method == WHATSAPP_REQUEST else _KIND_REPLY
    else:
        raise EchoCodecError("a STUN message that carries no echo")
    value = _attribute(message, code)
    layout = _REQUEST if kind == _KIND_REQUEST else _REPLY
    plain = _mask(message.transaction_id, value[: layout.size + TAG_SIZE])
    body, key = _parse_body(plain, shape, kind, size, keys)
    return Decoded(shape, body, message.transaction_id, size, key)


def _decode_masked(data: bytes, shape: Shape, start: int, nonce: bytes, kind: int,
                   keys: Sequence[bytes]) -> Decoded:
    layout = _REQUEST if kind == _KIND_REQUEST else _REPLY
    plain = _mask(nonce, data[start : start + layout.size + TAG_SIZE])
    body, key = _parse_body(plain, shape, kind, len(data), keys)
    return Decoded(shape, body, nonce, len(data), key)


def _decode_telegram(data: bytes, keys: Sequence[bytes]) -> Decoded:
    if len(data) < _TG_HEAD or data[16:28] != _TG_FILL:
        raise EchoCodecError("not a telegram-shaped datagram")
    special = data[28:32]
    if special == _TG_SELF_INFO:
        kind = _KIND_REQUEST
    elif special == _TG_SELF_INFO_REPLY:
        kind = _KIND_REPLY
    else:
        raise EchoCodecError("a telegram-shaped datagram with an unknown id")
    return _decode_masked(data, Shape.TELEGRAM, _TG_HEAD, data[32:40], kind, keys)


def _decode_rtp(data: bytes, kind: int, keys: Sequence[bytes]) -> Decoded:
    if len(data) < 12 or data[0] != 0x80 or not 96 <= data[1] & 0x7F <= 127:
        raise EchoCodecError("not an RTP header with a dynamic payload type")
    return _decode_masked(data, Shape.RTP, 12, data[:12], kind, keys)


def _decode_random(data: bytes, kind: int, keys: Sequence[bytes]) -> Decoded:
    if len(data) < 16:
        raise EchoCodecError("too short for a random-shaped datagram")
    return _decode_masked(data, Shape.RANDOM, 16, data[:16], kind, keys)


def decode(data: bytes, keys: Sequence[bytes] = (PUBLIC_KEY,), *,
           replies: bool = False) -> Decoded:
    """A probe-echo request (a reply with `replies=True`) in any shape, tagged by one of `keys`.

    Raises EchoCodecError for anything else. Shapes are tried from the most specific framing
    to the least (random has none, so it is always tried last)."""
    data = bytes(data)
    if len(data) > MAX_DATAGRAM:
        raise EchoCodecError(f"{len(data)} bytes: longer than any datagram")
    kind = _KIND_REPLY if replies else _KIND_REQUEST
    problems: list[str] = []
    mismatch = False
    if len(data) >= stun.HEADER_SIZE and data[4:8] == stun.MAGIC_COOKIE.to_bytes(4, "big"):
        try:
            message = stun.decode_message(data)
            decoded = decode_stun(message, len(data), keys)
            if _kind_of(decoded) == kind:
                return decoded
            problems.append("STUN: the other direction")
        except (EchoCodecError, stun.StunCodecError) as exc:
            mismatch |= isinstance(exc, TagMismatch)
            problems.append(f"STUN: {exc}")
    attempts: list[Callable[[], Decoded]] = []
    if len(data) >= _TG_HEAD and data[16:28] == _TG_FILL:
        attempts.append(lambda: _decode_telegram(data, keys))
    if data[:1] == b"\x80":
        attempts.append(lambda: _decode_rtp(data, kind, keys))
    attempts.append(lambda: _decode_random(data, kind, keys))
    for attempt in attempts:
        try:
            decoded = attempt()
        except EchoCodecError as exc:
            mismatch |= isinstance(exc, TagMismatch)
            problems.append(str(exc))
            continue
        if _kind_of(decoded) == kind:
            return decoded
        problems.append("the other direction")
    error = TagMismatch if mismatch else EchoCodecError
    raise error("not a probe-echo datagram: " + "; ".join(problems))


def _kind_of(decoded: Decoded) -> int:
    return _KIND_REQUEST if isinstance(decoded.message, EchoRequest) else _KIND_REPLY



# --- a flow of echo requests (probe/wire/flow.py's Shape) -------------------------------------


class EchoFlow:
    """Probe-echo requests of one shape and one session, for a call-like flow: each request
    says how many the flow has sent, each reply how many the reflector received. The key of a
    request is its sequence number. `counters` keeps the reply that had seen the most."""

    def __init__(self, shape: Shape, key: bytes = PUBLIC_KEY, session: bytes | None = None,
                 first_seq: int = 0) -> None:
        self.shape = shape
        self.key = key
        self.session = session or new_session()
        self.first_seq = first_seq  # a flow that continues a session numbers on from here
        self.sent_packets = 0
        self.sent_bytes = 0
        self.counters: EchoReply | None = None
        self.replies: list[EchoReply] = []  # every reply, for a counters query

    def size(self, wanted: int) -> int:
        """The size a request of about `wanted` bytes has in this shape (a reflector answers
        nothing smaller than min_request_size)."""
        return _round_up(max(wanted, min_request_size(self.shape)), _granule(self.shape))

    def request(self, seq: int, size: int) -> tuple[bytes, bytes]:
        number = self.first_seq + seq
        size = self.size(size)
        self.sent_packets += 1
        self.sent_bytes += size
        data = encode_request(EchoRequest(self.session, number % 2**32, self.sent_packets,
                                          self.sent_bytes % 2**32), self.shape, size, self.key)
        return data, (number % 2**32).to_bytes(4, "big")

    def answer(self, data: bytes) -> Answer | None:
        try:
            decoded = decode(data, (self.key,), replies=True)
        except EchoCodecError:
            return None
        reply = decoded.message
        if not isinstance(reply, EchoReply) or reply.session != self.session:
            return None
        self.replies.append(reply)
        if self.counters is None or reply.received_packets >= self.counters.received_packets:
            self.counters = reply
        return Answer(reply.seq.to_bytes(4, "big"))

# --- TCP frames ----------------------------------------------------------------------------

FRAME_HEADER = 3
MAX_FRAME_PAYLOAD = 0xFFFF
_FRAME = struct.Struct("!BH")
_COUNTERS = struct.Struct("!IIII")
_ECHO_MIN = 4 + _COUNTERS.size  # seq, and room for the counters the reply puts in its place
_HELLO_DOMAIN = b"\x00tcp"


class FrameType(IntEnum):
    HELLO = 0x01  # client: session(8) | tag(8); first frame, else the connection is dropped
    ECHO = 0x02  # client: seq(4) | filler (>= 16 bytes)
    DOWNLOAD = 0x03  # client: total(4) | chunk(2): send `total` bytes in `chunk`-byte frames
    DATA = 0x04  # client: anything; only counted (an upload)
    REPORT = 0x05  # client: 16 bytes of filler (room for the reply's counters)
    HELLO_OK = 0x81  # server: empty
    ECHO_REPLY = 0x82  # server: seq(4) | counters(16) | the filler past its first 16 bytes
    DOWNLOAD_DONE = 0x83  # server: status(1) | counters(16), after the last DOWNLOAD_DATA
    DOWNLOAD_DATA = 0x84  # server: one chunk
    REPORT_REPLY = 0x85  # server: counters(16)


_FRAME_TYPES = {int(t): t for t in FrameType}


class DownloadStatus(IntEnum):
    SENT = 0  # every byte asked for was sent
    REFUSED = 1  # over the reflector's limits: nothing was sent (not the network's doing)


@dataclass(frozen=True, slots=True)
class Frame:
    type: FrameType
    payload: bytes


@dataclass(frozen=True, slots=True)
class Counters:
    """One side's count of the connection, in frames and frame bytes (headers included):
    received up to and including the frame being answered, sent before this answer."""

    received_bytes: int = 0
    received_frames: int = 0
    sent_bytes: int = 0
    sent_frames: int = 0

    def pack(self) -> bytes:
        return _COUNTERS.pack(*(v & _U32 for v in (self.received_bytes, self.received_frames,
                                                   self.sent_bytes, self.sent_frames)))


def encode_frame(kind: FrameType, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise EchoCodecError(f"a frame payload is at most {MAX_FRAME_PAYLOAD} bytes")
    return _FRAME.pack(kind, len(payload)) + payload


class FrameReader:
    """Cuts a byte stream into frames; holds at most one frame's worth of bytes."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        """The frames completed by `data`; raises EchoCodecError on an unknown frame type."""
        self._buffer += data
        frames = []
        while len(self._buffer) >= FRAME_HEADER:
            kind, length = _FRAME.unpack_from(self._buffer)
            if kind not in _FRAME_TYPES:
                raise EchoCodecError(f"unknown frame type {kind:#04x}")
            end = FRAME_HEADER + length
            if len(self._buffer) < end:
                break
            frames.append(Frame(_FRAME_TYPES[kind], bytes(self._buffer[FRAME_HEADER:end])))
            del self._buffer[:end]
        return frames


def hello(session: bytes, key: bytes = PUBLIC_KEY) -> bytes:
    if len(session) != SESSION_SIZE:
        raise EchoCodecError(f"a session is {SESSION_SIZE} bytes")
    return encode_frame(FrameType.HELLO, session + _tag(key, _HELLO_DOMAIN, session))


def parse_hello(payload: bytes, keys: Sequence[bytes]) -> tuple[bytes, bytes]:
    """(session, the key that tagged it); raises when the tag matches no key."""
    if len(payload) != SESSION_SIZE + TAG_SIZE:
        raise EchoCodecError("a HELLO is a session and a tag")
    session, tag = payload[:SESSION_SIZE], payload[SESSION_SIZE:]
    for key in keys:
        if hmac.compare_digest(_tag(key, _HELLO_DOMAIN, session), tag):
            return session, key
    raise TagMismatch("the tag matches no key")


def echo_request(seq: int, size: int) -> bytes:
    """An ECHO frame of `size` bytes in all (at least 23: its reply has counters in it)."""
    _check_u32(seq, "seq")
    if not FRAME_HEADER + _ECHO_MIN <= size <= FRAME_HEADER + MAX_FRAME_PAYLOAD:
        raise EchoCodecError(f"an ECHO frame is {FRAME_HEADER + _ECHO_MIN} to "
                             f"{FRAME_HEADER + MAX_FRAME_PAYLOAD} bytes, not {size}")
    return encode_frame(FrameType.ECHO, struct.pack("!I", seq) + bytes(size - FRAME_HEADER - 4))


def parse_echo(payload: bytes) -> int:
    if len(payload) < _ECHO_MIN:
        raise EchoCodecError(f"an ECHO payload is at least {_ECHO_MIN} bytes")
    return int.from_bytes(payload[:4], "big")


def echo_reply(request_payload: bytes, counters: Counters) -> bytes:
    """The answer to an ECHO: as long as it, the counters written over the filler's start."""
    parse_echo(request_payload)
    payload = request_payload[:4] + counters.pack() + request_payload[_ECHO_MIN:]
    return encode_frame(FrameType.ECHO_REPLY, payload)


def parse_counters(payload: bytes) -> Counters:
    if len(payload) != _COUNTERS.size:
        raise EchoCodecError(f"counters are {_COUNTERS.size} bytes")
    return Counters(*_COUNTERS.unpack(payload))


def parse_echo_reply(payload: bytes) -> tuple[int, Counters]:
    if len(payload) < _ECHO_MIN:
        raise EchoCodecError("an ECHO_REPLY is too short")
    return int.from_bytes(payload[:4], "big"), parse_counters(payload[4:_ECHO_MIN])


def download_request(total: int, chunk: int) -> bytes:
    _check_u32(total, "total")
    if not 1 <= chunk <= MAX_FRAME_PAYLOAD:
        raise EchoCodecError(f"a chunk is 1 to {MAX_FRAME_PAYLOAD} bytes")
    return encode_frame(FrameType.DOWNLOAD, struct.pack("!IH", total, chunk))


def parse_download(payload: bytes) -> tuple[int, int]:
    if len(payload) != 6:
        raise EchoCodecError("a DOWNLOAD is total(4) and chunk(2)")
    total, chunk = struct.unpack("!IH", payload)
    if chunk == 0:
        raise EchoCodecError("a DOWNLOAD chunk of 0 bytes")
    return int(total), int(chunk)


def download_done(status: DownloadStatus, counters: Counters) -> bytes:
    return encode_frame(FrameType.DOWNLOAD_DONE, bytes([status]) + counters.pack())


def parse_download_done(payload: bytes) -> tuple[DownloadStatus, Counters]:
    if len(payload) != 1 + _COUNTERS.size or payload[0] not in (0, 1):
        raise EchoCodecError("a DOWNLOAD_DONE is a status and counters")
    return DownloadStatus(payload[0]), parse_counters(payload[1:])


def report_request() -> bytes:
    return encode_frame(FrameType.REPORT, bytes(_COUNTERS.size))


def report_reply(counters: Counters) -> bytes:
    return encode_frame(FrameType.REPORT_REPLY, counters.pack())
