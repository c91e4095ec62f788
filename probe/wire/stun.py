"""STUN messages (RFC 8489) and the TURN Allocate request (RFC 8656): bytes <-> frozen values.

Strategy: a message is a header (method, class, transaction id) and an ordered tuple of typed
attributes; `encode_message` and `decode_message` are exact inverses for every message this
module can build. Attributes the probe has no use for are kept raw as `UnknownAttribute`, so a
decoded message loses nothing. Decoding trusts nothing: every length is checked against what is
left before it is used, and any inconsistency raises `StunCodecError` (a `CodecError`), never
another exception, because the bytes come from the network and may be hostile.

No sockets and no clock: the caller sends the bytes, times the answers and matches transaction
ids (`is_response_to` does the comparison). The only side effect is `os.urandom` for fresh
transaction ids.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple, TypeVar

from probe.errors import CodecError

__all__ = [
    "ATTRIBUTE_TYPES",
    "FINGERPRINT_XOR",
    "HEADER_SIZE",
    "MAGIC_COOKIE",
    "MAX_MESSAGE_SIZE",
    "OPTIONAL_PADDING",
    "TRANSPORT_UDP",
    "Attribute",
    "Class",
    "ErrorCode",
    "Fingerprint",
    "MappedAddress",
    "Message",
    "Method",
    "Nonce",
    "Realm",
    "RequestedTransport",
    "Software",
    "StunCodecError",
    "Summary",
    "UnknownAttribute",
    "XorMappedAddress",
    "allocate_request",
    "binding_request",
    "binding_success",
    "decode_message",
    "encode_message",
    "error_response",
    "header_answers",
    "is_response_to",
    "message_length",
    "new_transaction_id",
    "pad",
    "summarize",
]

HEADER_SIZE = 20
MAGIC_COOKIE = 0x2112A442  # RFC 8489 section 5
MAX_MESSAGE_SIZE = 65536  # no sane STUN message is bigger; refuse before parsing anything
FINGERPRINT_XOR = 0x5354554E  # RFC 8489 section 14.7: "STUN" xor'ed into the CRC-32
TRANSPORT_UDP = 17  # RFC 8656 section 18.7: IANA protocol number in REQUESTED-TRANSPORT
MAX_TEXT_BYTES = 763  # RFC 8489 sections 14.8-14.10: REALM, NONCE, SOFTWARE, reason phrase
# The attribute `pad` fills a message with: unassigned, in the comprehension-optional range
# (0x8000-0xFFFF), so every RFC 8489 agent must ignore it (section 14). RFC 5780's PADDING
# (0x0026) is not used: it is comprehension-required, so a server without RFC 5780 must refuse
# the request (420), and coturn, which implements it, pads its *answer* to the path MTU: a
# 160-byte request would bring back ~1500 bytes. 0xFF26 echoes 0x0026 in the designated-expert
# range (0xC000-0xFFFF), far above the values IANA has assigned there (0xC000-0xC071).
OPTIONAL_PADDING = 0xFF26

_HEADER = struct.Struct("!HHI12s")
_ATTRIBUTE_HEADER = struct.Struct("!HH")
_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
_ADDRESS_HEADER = struct.Struct("!BBH")  # reserved, family, port
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_ADDRESS_FAMILIES: dict[int, tuple[type[IPAddress], int]] = {
    0x01: (ipaddress.IPv4Address, 4), 0x02: (ipaddress.IPv6Address, 16)}
_A = TypeVar("_A")


class StunCodecError(CodecError):
    """Bytes that are not a well-formed STUN message, or a message that cannot be encoded."""


class Method(IntEnum):
    BINDING = 0x001
    ALLOCATE = 0x003  # RFC 8656 section 18


class Class(IntEnum):
    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


# --- attributes ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MappedAddress:
    """MAPPED-ADDRESS (0x0001): the client's address as the server saw it, in the clear."""

    address: IPAddress
    port: int


@dataclass(frozen=True, slots=True)
class XorMappedAddress:
    """XOR-MAPPED-ADDRESS (0x0020): the same, xor'ed so that NATs do not rewrite it."""

    address: IPAddress
    port: int


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """ERROR-CODE (0x0009): a code from 300 to 699 and a reason phrase."""

    code: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Realm:
    """REALM (0x0014)."""

    value: str


@dataclass(frozen=True, slots=True)
class Nonce:
    """NONCE (0x0015)."""

    value: str


@dataclass(frozen=True, slots=True)
class Software:
    """SOFTWARE (0x8022): the sender's name and version, free text."""

    value: str


@dataclass(frozen=True, slots=True)
class RequestedTransport:
    """REQUESTED-TRANSPORT (0x0019, RFC 8656): the relay's transport, an IP protocol number."""

    protocol: int = TRANSPORT_UDP


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """FINGERPRINT (0x8028): computed on encode, verified on decode; always the last attribute."""


@dataclass(frozen=True, slots=True)
class UnknownAttribute:
    """Any other attribute, kept as its type and raw value (without padding)."""

    type: int
    value: bytes


Attribute = (
    MappedAddress
    | XorMappedAddress
    | ErrorCode
    | Realm
    | Nonce
    | Software
    | RequestedTransport
    | Fingerprint
    | UnknownAttribute
)

ATTRIBUTE_TYPES: dict[type, int] = {
    MappedAddress: 0x0001,
    ErrorCode: 0x0009,
    Realm: 0x0014,
    Nonce: 0x0015,
    RequestedTransport: 0x0019,
    XorMappedAddress: 0x0020,
    Software: 0x8022,
    Fingerprint: 0x8028,
}
_KNOWN_TYPES = {code: cls for cls, code in ATTRIBUTE_TYPES.items()}
_FINGERPRINT_TYPE = ATTRIBUTE_TYPES[Fingerprint]


@dataclass(frozen=True, slots=True)
class Message:
    """One STUN message: method, class, 96-bit transaction id and attributes in wire order."""

    method: int
    cls: Class
    transaction_id: bytes
    attributes: tuple[Attribute, ...] = ()

    def __post_init__(self) -> None:
        if len(self.transaction_id) != 12:
            raise StunCodecError("a transaction id is 12 bytes")
        if not 0 <= self.method < 0x1000:
            raise StunCodecError(f"method {self.method:#x} does not fit in 12 bits")

    def find(self, kind: type[_A]) -> _A | None:
        """The first attribute of this kind (RFC 8489 section 14: later duplicates are ignored)."""
        for attribute in self.attributes:
            if isinstance(attribute, kind):
                return attribute
        return None

    @property
    def is_response(self) -> bool:
        return self.cls in (Class.SUCCESS, Class.ERROR)


# --- building messages ---------------------------------------------------------------------


def new_transaction_id() -> bytes:
    """A fresh random 96-bit transaction id (RFC 8489 section 5: uniformly random)."""
    return os.urandom(12)


def binding_request(transaction_id: bytes | None = None) -> Message:
    """A bare Binding request, as ICE and plain STUN clients send it."""
    return Message(Method.BINDING, Class.REQUEST, transaction_id or new_transaction_id())


def allocate_request(
    transaction_id: bytes | None = None, protocol: int = TRANSPORT_UDP
) -> Message:
    """An unauthenticated TURN Allocate request (RFC 8656 section 7.1): a TURN server answers
    it with 401 and a REALM and NONCE, which proves it is there without any credential."""
    return Message(
        Method.ALLOCATE,
        Class.REQUEST,
        transaction_id or new_transaction_id(),
        (RequestedTransport(protocol),),
    )


def binding_success(
    request: Message,
    address: IPAddress,
    port: int,
    *,
    software: str | None = None,
    fingerprint: bool = True,
) -> Message:
    """The success response a server sends back: the client's address in XOR-MAPPED-ADDRESS."""
    attributes: list[Attribute] = [XorMappedAddress(address, port)]
    if software is not None:
        attributes.append(Software(software))
    if fingerprint:
        attributes.append(Fingerprint())
    return Message(request.method, Class.SUCCESS, request.transaction_id, tuple(attributes))


def error_response(
    request: Message,
    code: int,
    reason: str = "",
    *,
    realm: str | None = None,
    nonce: str | None = None,
    software: str | None = None,
    fingerprint: bool = True,
) -> Message:
    """An error response to `request` (401 with REALM and NONCE is TURN's first answer)."""
    attributes: list[Attribute] = [ErrorCode(code, reason)]
    if realm is not None:
        attributes.append(Realm(realm))
    if nonce is not None:
        attributes.append(Nonce(nonce))
    if software is not None:
        attributes.append(Software(software))
    if fingerprint:
        attributes.append(Fingerprint())
    return Message(request.method, Class.ERROR, request.transaction_id, tuple(attributes))


def pad(message: Message, size: int) -> Message:
    """`message` with an OPTIONAL_PADDING attribute of zeros, so that it encodes to exactly
    `size` bytes (a voice frame's size, say) and stays a request every server answers.

    The attribute goes last, or just before a final FINGERPRINT (which then covers it). An
    attribute is at least 4 bytes and everything is 4-byte aligned, so `size` must be the
    message's own size, or at least 4 bytes more and a multiple of 4: StunCodecError otherwise.
    """
    natural = len(encode_message(message))
    extra = size - natural
    if extra == 0:
        return message
    if extra < 4 or extra % 4 or size > MAX_MESSAGE_SIZE:
        raise StunCodecError(
            f"cannot pad a {natural}-byte message to {size} bytes: a multiple of 4 from "
            f"{natural + 4} to {MAX_MESSAGE_SIZE} is needed")
    padding = UnknownAttribute(OPTIONAL_PADDING, bytes(extra - 4))
    attributes = message.attributes
    if attributes and isinstance(attributes[-1], Fingerprint):
        attributes = (*attributes[:-1], padding, attributes[-1])
    else:
        attributes = (*attributes, padding)
    return Message(message.method, message.cls, message.transaction_id, attributes)


def is_response_to(response: Message, request: Message) -> bool:
    """Whether `response` answers `request`: same transaction id and method, a response class."""
    return (
        response.is_response
        and response.transaction_id == request.transaction_id
        and response.method == request.method
    )


def header_answers(data: bytes, request: Message) -> bool:
    """Whether `data` begins with the header of an answer to `request` (a response class, its
    method and transaction id), whatever follows: an answer, even one whose body does not
    decode (a REALM longer than RFC 8489 allows), is no silence."""
    try:
        message_length(data[:HEADER_SIZE])
    except StunCodecError:
        return False
    message_type, _, _, transaction_id = _HEADER.unpack_from(data)
    method, cls = _split_message_type(message_type)
    return is_response_to(Message(method, cls, transaction_id), request)


# --- encoding ------------------------------------------------------------------------------


def _message_type(method: int, cls: int) -> int:
    # RFC 8489 section 5: the two class bits are interleaved into the 12 method bits,
    # M11..M7 C1 M6..M4 C0 M3..M0.
    return (
        ((method & 0xF80) << 2)
        | ((method & 0x070) << 1)
        | (method & 0x00F)
        | ((cls & 0b10) << 7)
        | ((cls & 0b01) << 4)
    )


_CLASSES = tuple(Class)  # by value: indexing is cheaper than the enum's own lookup


def _split_message_type(message_type: int) -> tuple[int, Class]:
    method = ((message_type >> 2) & 0xF80) | ((message_type >> 1) & 0x070) | (message_type & 0xF)
    cls = ((message_type >> 7) & 0b10) | ((message_type >> 4) & 0b01)
    return method, _CLASSES[cls]


def _xor_address(packed: bytes, transaction_id: bytes) -> bytes:
    # RFC 8489 section 14.2: IPv4 is xor'ed with the cookie, IPv6 with cookie + transaction id.
    # One integer xor, not a byte loop: this runs for every answer the stun layer receives.
    size = len(packed)
    mask = int.from_bytes((_COOKIE_BYTES + transaction_id)[:size], "big")
    return (int.from_bytes(packed, "big") ^ mask).to_bytes(size, "big")


def _encode_address(attribute: MappedAddress | XorMappedAddress, transaction_id: bytes) -> bytes:
    if not 0 <= attribute.port < 0x10000:
        raise StunCodecError(f"port {attribute.port} out of range")
    family = 0x01 if attribute.address.version == 4 else 0x02
    packed = attribute.address.packed
    port = attribute.port
    if isinstance(attribute, XorMappedAddress):
        port ^= MAGIC_COOKIE >> 16
        packed = _xor_address(packed, transaction_id)
    return _ADDRESS_HEADER.pack(0, family, port) + packed


def _encode_text(text: str, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > MAX_TEXT_BYTES:
        raise StunCodecError(f"{what} longer than {MAX_TEXT_BYTES} bytes")
    return raw


def _encode_value(attribute: Attribute, transaction_id: bytes) -> tuple[int, bytes]:
    if isinstance(attribute, UnknownAttribute):
        if not 0 <= attribute.type < 0x10000 or attribute.type in _KNOWN_TYPES:
            raise StunCodecError(f"attribute type {attribute.type:#x} cannot be sent raw")
        return attribute.type, attribute.value
    code = ATTRIBUTE_TYPES[type(attribute)]
    if isinstance(attribute, MappedAddress | XorMappedAddress):
        return code, _encode_address(attribute, transaction_id)
    if isinstance(attribute, ErrorCode):
        # RFC 8489 section 14.8: class (hundreds) in 3 bits, number (0-99) in 8 bits.
        if not 300 <= attribute.code <= 699:
            raise StunCodecError(f"error code {attribute.code} out of range 300-699")
        head = struct.pack("!HBB", 0, attribute.code // 100, attribute.code % 100)
        return code, head + _encode_text(attribute.reason, "reason phrase")
    if isinstance(attribute, Realm | Nonce | Software):
        return code, _encode_text(attribute.value, type(attribute).__name__)
    if isinstance(attribute, RequestedTransport):
        if not 0 <= attribute.protocol < 256:
            raise StunCodecError(f"protocol {attribute.protocol} out of range")
        return code, bytes([attribute.protocol, 0, 0, 0])
    raise StunCodecError(f"cannot encode {attribute!r}")  # Fingerprint is written by the caller


def _pad(value: bytes) -> bytes:
    return value + b"\x00" * (-len(value) % 4)


def encode_message(message: Message) -> bytes:
    """The bytes of a message; a `Fingerprint` attribute, if any, must come last."""
    body = bytearray()
    attributes = message.attributes
    fingerprint = bool(attributes) and isinstance(attributes[-1], Fingerprint)
    if fingerprint:
        attributes = attributes[:-1]
    for attribute in attributes:
        if isinstance(attribute, Fingerprint):
            raise StunCodecError("FINGERPRINT must be the last attribute")
        code, value = _encode_value(attribute, message.transaction_id)
        if len(value) > 0xFFFF:
            raise StunCodecError("attribute value longer than 65535 bytes")
        body += _ATTRIBUTE_HEADER.pack(code, len(value)) + _pad(value)
    length = len(body) + (8 if fingerprint else 0)
    if HEADER_SIZE + length > MAX_MESSAGE_SIZE:
        raise StunCodecError(f"message longer than {MAX_MESSAGE_SIZE} bytes")
    message_type = _message_type(message.method, message.cls)
    data = _HEADER.pack(message_type, length, MAGIC_COOKIE, message.transaction_id) + body
    if fingerprint:
        # RFC 8489 section 14.7: CRC-32 over everything before the attribute, with the header
        # length already counting the FINGERPRINT attribute itself.
        crc = (zlib.crc32(data) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
        data += _ATTRIBUTE_HEADER.pack(_FINGERPRINT_TYPE, 4) + crc.to_bytes(4, "big")
    return bytes(data)


# --- decoding ------------------------------------------------------------------------------


def message_length(header: bytes) -> int:
    """The whole message's size from its first 20 bytes: how STUN over TCP is framed
    (RFC 8489 section 6.2.2). Raises StunCodecError when the header is not STUN's."""
    if len(header) < HEADER_SIZE:
        raise StunCodecError(f"a STUN header is {HEADER_SIZE} bytes, got {len(header)}")
    message_type, length, cookie, _ = _HEADER.unpack_from(header)
    length = int(length)
    if message_type & 0xC000:
        raise StunCodecError("the two leading bits of a STUN message are zero")
    if cookie != MAGIC_COOKIE:
        raise StunCodecError(f"wrong magic cookie {cookie:#010x}")
    if length % 4:
        raise StunCodecError(f"message length {length} is not a multiple of 4")
    return HEADER_SIZE + length


def _address_parts(kind: type[MappedAddress | XorMappedAddress], value: bytes
                   ) -> tuple[type[IPAddress], int, bytes]:
    """(address type, port, address bytes) of an address attribute, checked, still xor'ed."""
    if len(value) < 4:
        raise StunCodecError(f"{kind.__name__} shorter than 4 bytes")
    _, family, port = _ADDRESS_HEADER.unpack_from(value)
    if family not in _ADDRESS_FAMILIES:
        raise StunCodecError(f"{kind.__name__}: unknown address family {family:#x}")
    address_type, size = _ADDRESS_FAMILIES[family]
    packed = value[4:]
    if len(packed) != size:
        raise StunCodecError(f"{kind.__name__}: {len(packed)} address bytes for family {family}")
    return address_type, port, packed


def _decode_address(
    kind: type[MappedAddress | XorMappedAddress], value: bytes, transaction_id: bytes
) -> MappedAddress | XorMappedAddress:
    address_type, port, packed = _address_parts(kind, value)
    if kind is XorMappedAddress:
        port ^= MAGIC_COOKIE >> 16
        packed = _xor_address(packed, transaction_id)
    return kind(address_type(packed), port)


def _decode_text(value: bytes, what: str) -> str:
    if len(value) > MAX_TEXT_BYTES:
        raise StunCodecError(f"{what} longer than {MAX_TEXT_BYTES} bytes")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise StunCodecError(f"{what} is not UTF-8") from None


def _decode_value(code: int, value: bytes, transaction_id: bytes) -> Attribute:
    kind = _KNOWN_TYPES.get(code)
    if kind is None:
        return UnknownAttribute(code, value)
    if kind is MappedAddress or kind is XorMappedAddress:
        return _decode_address(kind, value, transaction_id)
    if kind is ErrorCode:
        if len(value) < 4:
            raise StunCodecError("ERROR-CODE shorter than 4 bytes")
        hundreds, number = value[2] & 0x07, value[3]
        if not 3 <= hundreds <= 6 or number > 99:
            raise StunCodecError(f"ERROR-CODE class {hundreds} number {number} out of range")
        return ErrorCode(hundreds * 100 + number, _decode_text(value[4:], "reason phrase"))
    if kind is Realm or kind is Nonce or kind is Software:
        return kind(_decode_text(value, kind.__name__))
    if kind is RequestedTransport:
        if len(value) != 4:
            raise StunCodecError("REQUESTED-TRANSPORT is 4 bytes")
        return RequestedTransport(value[0])
    raise StunCodecError(f"attribute {code:#06x} cannot be decoded here")


# The stun layer decodes a flow's first answer again once the flow is over (for the mapped
# address), after the flow decoded it to match it: the last few hundred small messages are
# kept, the same frozen Message for the same bytes, so the second decode is a look-up.
_RECENT_BYTES = 548  # the answers a flow gets; larger ones, or not bytes, are always decoded


def decode_message(data: bytes) -> Message:
    """One whole STUN message (a UDP datagram, or a TCP frame cut by `message_length`).

    Raises StunCodecError for anything that is not exactly one well-formed message: wrong
    cookie, bad lengths, bytes after the message, a FINGERPRINT that is wrong or not last.
    """
    if type(data) is bytes and len(data) <= _RECENT_BYTES:
        return _decode_recent(data)
    return _decode(data)


@functools.lru_cache(maxsize=256)
def _decode_recent(data: bytes) -> Message:
    return _decode(data)  # a StunCodecError is not kept: raised again at each decode


def _decode(data: bytes) -> Message:
    method, cls, transaction_id, attributes, _ = _walk(data, build=True)
    return Message(method, cls, transaction_id, attributes)


class Summary(NamedTuple):
    """What matching an answer to a request needs of a message."""

    method: int
    cls: Class
    transaction_id: bytes
    error_code: int | None  # the first ERROR-CODE's code, as Message.find(ErrorCode) gives it

    @property
    def is_response(self) -> bool:
        return self.cls in (Class.SUCCESS, Class.ERROR)


def summarize(data: bytes) -> Summary:
    """A message's method, class, transaction id and error code, for half the cost of
    `decode_message`: the same checks, every attribute's included (StunCodecError for exactly
    what it refuses, with the same words), but no attribute built except ERROR-CODE, and no
    address decoded (a call flow matches 50 answers a second this way)."""
    method, cls, transaction_id, _, error_code = _walk(data, build=False)
    return Summary(method, cls, transaction_id, error_code)


def _walk(data: bytes, build: bool
          ) -> tuple[int, Class, bytes, tuple[Attribute, ...], int | None]:
    """Check a whole message; (method, class, transaction id, the attributes when `build`,
    the first error code)."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise StunCodecError(f"{len(data)} bytes: longer than any STUN message")
    data = bytes(data)  # a memoryview or bytearray from a socket: slices below are then bytes
    size = message_length(data)
    if size != len(data):
        raise StunCodecError(f"header says {size} bytes, got {len(data)}")
    message_type, _, _, transaction_id = _HEADER.unpack_from(data)
    method, cls = _split_message_type(message_type)
    attributes: list[Attribute] = []
    error_code: int | None = None
    offset = HEADER_SIZE
    while offset < size:
        if size - offset < 4:
            raise StunCodecError(f"truncated attribute header at byte {offset}")
        code, length = _ATTRIBUTE_HEADER.unpack_from(data, offset)
        start = offset + 4
        end = start + length
        padded_end = start + length + (-length % 4)
        if padded_end > size:
            raise StunCodecError(f"attribute {code:#06x} of {length} bytes overruns the message")
        value = data[start:end]
        if code == _FINGERPRINT_TYPE:
            if padded_end != size:
                raise StunCodecError("FINGERPRINT is not the last attribute")
            if length != 4:
                raise StunCodecError(f"FINGERPRINT of {length} bytes")
            expected = (zlib.crc32(data[:offset]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
            if int.from_bytes(value, "big") != expected:
                raise StunCodecError("FINGERPRINT does not match the message")
            if build:
                attributes.append(Fingerprint())
        elif build:
            attribute = _decode_value(code, value, transaction_id)
            if error_code is None and isinstance(attribute, ErrorCode):
                error_code = attribute.code
            attributes.append(attribute)
        else:
            kind = _KNOWN_TYPES.get(code)
            if kind is MappedAddress or kind is XorMappedAddress:
                _address_parts(kind, value)  # checked as decoding checks it, not built
            elif kind is not None:
                attribute = _decode_value(code, value, transaction_id)
                if error_code is None and isinstance(attribute, ErrorCode):
                    error_code = attribute.code
        offset = padded_end
    return method, cls, transaction_id, tuple(attributes), error_code
