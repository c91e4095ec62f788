"""The lab censor's NFQUEUE helper: takes the packets a queue rule hands it and drops, delays or
passes each one, for what rules and netem cannot do here (this kernel has no sch_netem).

Run inside the censor namespace as `nfqueue.py SPEC_JSON`, where SPEC_JSON is
{"queue": N, "log": path, "mode": "lossjitter" | "quic-sni", ...mode options}:
  lossjitter  `loss` (0..1) drops each packet with that probability, `jitter_ms` holds the rest a
              uniform 0..J ms before accepting them (a delayed verdict: packets may overtake each
              other, as on a jittery path), `seed` makes the draws repeatable.
  quic-sni    decrypts each QUIC v1 client Initial (its keys derive from the Destination
              Connection ID, RFC 9001 section 5.2), reassembles the ClientHello from its CRYPTO
              frames and drops the datagram when the server_name is in `block`; everything else
              passes. What the GFW does to QUIC since 2024 (Zohaib et al., USENIX Security 2025).
When bound, one line `{"ready": true, "ports": {}}` goes to stdout (the lab's serve.py handshake,
so netns.Servers runs this too); `{"ready": false, "error": ...}` when binding fails. It stops at
EOF on stdin or SIGTERM, passing the packets it still holds. `log` is a JSON summary rewritten as
packets come: seen, accepted, dropped, delayed, and the SNIs decrypted.

The queue speaks nfnetlink_queue over a plain AF_NETLINK socket (linux/netfilter/nfnetlink_queue.h):
a CONFIG message binds the queue in copy-packet mode, PACKET messages bring each packet and its id,
a VERDICT message per id returns it to the kernel. No compiled library is needed.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import random
import selectors
import signal
import socket
import struct
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

# aioquic's public modules re-export these from its C extension without __all__ (hence ignores).
from aioquic.buffer import Buffer, BufferReadError  # type: ignore[attr-defined]
from aioquic.quic.crypto import CryptoError, CryptoPair  # type: ignore[attr-defined]
from aioquic.quic.packet import QuicPacketType, pull_ack_frame, pull_quic_header

from probe.mock.tls import parse_sni

# --- nfnetlink_queue -----------------------------------------------------------------------------
# Numbers from linux/netlink.h, linux/netfilter/nfnetlink.h and nfnetlink_queue.h. Netlink headers
# are in host order; nfnetlink's own fields and attribute values are big-endian.

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5  # an overrun loses packets (the kernel drops them), not the socket
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS = 1, 2
NFQNL_CFG_CMD_BIND, NFQNL_CFG_CMD_UNBIND = 1, 2
NFQNL_COPY_PACKET = 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR, NFQA_PAYLOAD = 1, 2, 10
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
NF_DROP, NF_ACCEPT = 0, 1

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_NLATTR = struct.Struct("=HH")  # length, type
_NFGENMSG = struct.Struct("!BBH")  # family, version, queue number
COPY_RANGE = 0xFFFF  # whole packets: the lab's are at most an MTU


def _align(length: int) -> int:
    return (length + 3) & ~3


def _attr(kind: int, value: bytes) -> bytes:
    raw = _NLATTR.pack(_NLATTR.size + len(value), kind) + value
    return raw + bytes(_align(len(raw)) - len(raw))


def _attrs(data: bytes, offset: int) -> Iterator[tuple[int, bytes]]:
    while offset + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, offset)
        if length < _NLATTR.size:
            return
        yield kind & NLA_TYPE_MASK, data[offset + _NLATTR.size:offset + length]
        offset += _align(length)


class QueueError(OSError):
    """The kernel refused a queue command (e.g. the queue is bound by another process)."""


@dataclass(frozen=True)
class Packet:
    """One queued packet: the kernel's id for the verdict, and the packet from its IP header."""

    id: int
    data: bytes


class NfQueue:
    """One bound nfnetlink queue on its own netlink socket."""

    def __init__(self, number: int) -> None:
        self.number = number
        self._seq = itertools.count(1)
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.bind((0, 0))
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
            command = struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_UNSPEC)
            params = struct.pack("!IB", COPY_RANGE, NFQNL_COPY_PACKET)
            self._request(NFQNL_MSG_CONFIG, _attr(NFQA_CFG_CMD, command)
                          + _attr(NFQA_CFG_PARAMS, params), ack=True)
        except BaseException:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def _request(self, kind: int, body: bytes, *, ack: bool = False) -> None:
        seq = next(self._seq)
        payload = _NFGENMSG.pack(socket.AF_UNSPEC, 0, self.number) + body
        flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
        self.sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(payload),
                                      (NFNL_SUBSYS_QUEUE << 8) | kind, flags, seq, 0) + payload)
        if ack:
            self._await_ack(seq)

    def _await_ack(self, seq: int) -> None:
        """Wait for the kernel's answer to request `seq`: errno 0 is success. Packets cannot
        arrive yet (the queue is bound by this very request, and no rule feeds it yet)."""
        while True:
            data = self.sock.recv(65536)
            for kind, msg_seq, body in self._messages(data):
                if kind == NLMSG_ERROR and msg_seq == seq:
                    errno = -struct.unpack_from("=i", body)[0]
                    if errno:
                        raise QueueError(errno, f"nfqueue {self.number}: {os.strerror(errno)}")
                    return

    @staticmethod
    def _messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, kind, _, seq, _ = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size:
                return
            yield kind, seq, data[offset + _NLMSGHDR.size:offset + length]
            offset += _align(length)

    def receive(self) -> list[Packet]:
        """The packets of one read (the kernel may put several in one)."""
        packets = []
        for kind, _, body in self._messages(self.sock.recv(1 << 18)):
            if kind != (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                continue
            packet_id, data = None, b""
            for attr, value in _attrs(body, _NFGENMSG.size):
                if attr == NFQA_PACKET_HDR:
                    packet_id = struct.unpack_from("!I", value)[0]
                elif attr == NFQA_PAYLOAD:
                    data = value
            if packet_id is not None:
                packets.append(Packet(packet_id, data))
        return packets

    def verdict(self, packet_id: int, verdict: int) -> None:
        self._request(NFQNL_MSG_VERDICT,
                      _attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id)))

    def close(self) -> None:
        """Unbind (the kernel drops what is still queued) and close the socket."""
        try:
            command = struct.pack("!BxH", NFQNL_CFG_CMD_UNBIND, socket.AF_UNSPEC)
            self._request(NFQNL_MSG_CONFIG, _attr(NFQA_CFG_CMD, command))
        except OSError:
            pass
        self.sock.close()


# --- packets ------------------------------------------------------------------------------------


def udp_payload(packet: bytes) -> bytes | None:
    """The UDP payload of an IPv4 or IPv6 packet (no extension headers); None for other packets
    and for fragments after the first."""
    if len(packet) < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        header = (packet[0] & 0x0F) * 4
        fragment_offset = struct.unpack_from("!H", packet, 6)[0] & 0x1FFF
        if packet[9] != socket.IPPROTO_UDP or fragment_offset:
            return None
    elif version == 6 and len(packet) >= 40:
        header = 40
        if packet[6] != socket.IPPROTO_UDP:
            return None
    else:
        return None
    return packet[header + 8:] if len(packet) >= header + 8 else None


@dataclass(frozen=True)
class Decision:
    """What to do with one packet: accept or drop, after holding it `delay` seconds."""

    verdict: int
    delay: float = 0.0


ACCEPT = Decision(NF_ACCEPT)
DROP = Decision(NF_DROP)


class Policy(Protocol):
    """A mode: decides each packet and says what it did (merged into the log)."""

    def decide(self, packet: bytes) -> Decision: ...

    def summary(self) -> dict[str, Any]: ...


class LossJitter:
    """Drop with probability `loss`, hold the rest uniformly 0..`jitter_ms`: a gurgling path."""

    def __init__(self, *, loss: float = 0.0, jitter_ms: float = 0.0, seed: int = 0) -> None:
        if not 0.0 <= loss <= 1.0 or jitter_ms < 0:
            raise ValueError(f"loss must be within 0..1 and jitter_ms >= 0: {loss}, {jitter_ms}")
        self.loss = loss
        self.jitter = jitter_ms / 1000.0
        self.random = random.Random(seed)

    def decide(self, packet: bytes) -> Decision:
        # Both draws are made for every packet, so one packet's fate never shifts the next's.
        lose, delay = self.random.random(), self.random.uniform(0.0, self.jitter)
        return DROP if lose < self.loss else Decision(NF_ACCEPT, delay)

    def summary(self) -> dict[str, Any]:
        return {"loss": self.loss, "jitter_ms": self.jitter * 1000.0}


# --- QUIC Initials ------------------------------------------------------------------------------

QUIC_V1 = 0x00000001
_FRAME_PADDING, _FRAME_PING, _FRAME_ACK, _FRAME_ACK_ECN = 0x00, 0x01, 0x02, 0x03
_FRAME_CRYPTO, _FRAME_CLOSE = 0x06, 0x1C
_MAX_HELLO = 1 << 16  # a ClientHello longer than this is not worth holding state for
_MAX_FLOWS = 256  # connections whose ClientHello is being reassembled or whose SNI is known


@dataclass
class _Hello:
    """A connection's CRYPTO stream so far, and its server_name once the ClientHello is whole."""

    fragments: dict[int, bytes] = field(default_factory=dict)
    done: bool = False
    sni: str | None = None

    def add(self, offset: int, data: bytes) -> None:
        if offset + len(data) <= _MAX_HELLO:
            self.fragments[offset] = data

    def stream(self) -> bytes:
        """The contiguous bytes from offset 0: fragments may come out of order or overlap."""
        out = bytearray()
        for offset in sorted(self.fragments):
            if offset > len(out):
                break
            data = self.fragments[offset]
            out += data[len(out) - offset:]
        return bytes(out)

    def parse(self) -> None:
        stream = self.stream()
        if len(stream) < 4 or stream[0] != 0x01:  # handshake type client_hello
            self.done = len(stream) >= 4  # another message first: not a ClientHello
            return
        length = 4 + int.from_bytes(stream[1:4], "big")
        if len(stream) < length:
            return
        # parse_sni reads a TLS record: give the handshake message the record header it lacks.
        record = b"\x16\x03\x01" + (length).to_bytes(2, "big") + stream[:length]
        self.sni, self.done = parse_sni(record), True


def _crypto_frames(payload: bytes) -> Iterator[tuple[int, bytes]]:
    """(offset, data) of each CRYPTO frame of a decrypted Initial payload. The frames allowed in
    an Initial (RFC 9000 section 17.2.2) are walked; any other type ends the walk."""
    buf = Buffer(data=payload)
    try:
        while not buf.eof():
            kind = buf.pull_uint_var()
            if kind in (_FRAME_PADDING, _FRAME_PING):
                continue
            if kind in (_FRAME_ACK, _FRAME_ACK_ECN):
                pull_ack_frame(buf)
                if kind == _FRAME_ACK_ECN:
                    for _ in range(3):
                        buf.pull_uint_var()
            elif kind == _FRAME_CRYPTO:
                offset, length = buf.pull_uint_var(), buf.pull_uint_var()
                yield offset, buf.pull_bytes(length)
            elif kind == _FRAME_CLOSE:
                buf.pull_uint_var()
                buf.pull_uint_var()
                buf.pull_bytes(buf.pull_uint_var())
            else:
                return
    except BufferReadError:
        return


def client_initials(datagram: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(DCID, decrypted payload) of each QUIC v1 Initial coalesced in a client's datagram; packets
    that do not decrypt with the Initial keys of their DCID are skipped."""
    buf = Buffer(data=datagram)
    while not buf.eof() and datagram[buf.tell()] & 0x80:  # long header packets only
        start = buf.tell()
        try:
            header = pull_quic_header(buf)
        except (BufferReadError, ValueError):
            return
        end = start + header.packet_length
        if header.version != QUIC_V1:
            return
        if header.packet_type == QuicPacketType.INITIAL:
            crypto = CryptoPair()
            crypto.setup_initial(header.destination_cid, is_client=False, version=QUIC_V1)
            try:
                _, payload, _ = crypto.decrypt_packet(datagram[start:end], buf.tell() - start, 0)
            except (CryptoError, ValueError):
                payload = None
            if payload is not None:
                yield header.destination_cid, payload
        buf.seek(end)


class QuicSni:
    """Drop client datagrams whose QUIC v1 Initial names a blocked server; pass all else.

    A ClientHello may span several Initials (large key shares); until it is whole the datagrams
    pass, as they must for a censor that cannot yet tell. Once a connection's name is known and
    blocked, every later Initial of it is dropped too (retransmissions included)."""

    def __init__(self, *, block: list[str]) -> None:
        self.block = {name.lower().rstrip(".") for name in block}
        self.flows: OrderedDict[bytes, _Hello] = OrderedDict()
        self.snis: dict[str, int] = {}
        self.initials = 0

    def decide(self, packet: bytes) -> Decision:
        datagram = udp_payload(packet)
        blocked = False
        for dcid, payload in client_initials(datagram or b""):
            self.initials += 1
            hello = self.flows.get(dcid)
            if hello is None:
                hello = self.flows[dcid] = _Hello()
                if len(self.flows) > _MAX_FLOWS:
                    self.flows.popitem(last=False)
            if not hello.done:
                for offset, data in _crypto_frames(payload):
                    hello.add(offset, data)
                hello.parse()
            if hello.done and hello.sni is not None:
                self.snis[hello.sni] = self.snis.get(hello.sni, 0) + 1
                blocked |= hello.sni in self.block
        return DROP if blocked else ACCEPT

    def summary(self) -> dict[str, Any]:
        return {"block": sorted(self.block), "initials": self.initials, "snis": self.snis}


def make_policy(spec: dict[str, Any]) -> Policy:
    """The mode a spec names, with its options."""
    mode = spec["mode"]
    if mode == "lossjitter":
        return LossJitter(loss=float(spec.get("loss", 0.0)),
                          jitter_ms=float(spec.get("jitter_ms", 0.0)),
                          seed=int(spec.get("seed", 0)))
    if mode == "quic-sni":
        return QuicSni(block=list(spec.get("block", [])))
    raise ValueError(f"unknown mode {mode!r} (lossjitter, quic-sni)")


# --- the helper ---------------------------------------------------------------------------------


class Held:
    """Packets held for a later verdict, soonest first; times come from the caller's clock."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, int]] = []  # due, order, packet id, verdict
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def hold(self, due: float, packet_id: int, verdict: int) -> None:
        heapq.heappush(self._heap, (due, next(self._order), packet_id, verdict))

    def wait(self, now: float) -> float | None:
        """Seconds until the next verdict is due (None: nothing held)."""
        return max(0.0, self._heap[0][0] - now) if self._heap else None

    def due(self, now: float | None) -> list[tuple[int, int]]:
        """(packet id, verdict) of every packet due by `now`, in order; all of them when None."""
        out = []
        while self._heap and (now is None or self._heap[0][0] <= now):
            _, _, packet_id, verdict = heapq.heappop(self._heap)
            out.append((packet_id, verdict))
        return out


@dataclass
class Counts:
    seen: int = 0
    accepted: int = 0
    dropped: int = 0
    delayed: int = 0
    held: int = 0


class _Stop(Exception):
    """SIGTERM: leave the loop and pass what is held."""


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def _write_log(path: Path, spec: dict[str, Any], counts: Counts, policy: Policy) -> None:
    summary = {"queue": spec["queue"], "mode": spec["mode"], **counts.__dict__,
               **policy.summary()}
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, path)  # a reader never sees half a summary


def serve(spec: dict[str, Any], clock: Callable[[], float]) -> int:
    """Bind queue `spec["queue"]` and give verdicts by the spec's mode until stdin closes."""
    log = Path(spec["log"])
    counts = Counts()
    held = Held()
    try:
        policy = make_policy(spec)
        queue = NfQueue(int(spec["queue"]))
    except (OSError, ValueError, KeyError) as exc:
        _say({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    signal.signal(signal.SIGTERM, _on_term)
    _write_log(log, spec, counts, policy)
    _say({"ready": True, "ports": {}})

    def give(packet_id: int, verdict: int) -> None:
        queue.verdict(packet_id, verdict)
        counts.held -= 1
        counts.accepted += verdict == NF_ACCEPT
        counts.dropped += verdict == NF_DROP

    try:
        with selectors.DefaultSelector() as sel:
            sel.register(queue, selectors.EVENT_READ, "queue")
            sel.register(sys.stdin.fileno(), selectors.EVENT_READ, "stdin")
            while True:
                changed = False
                for key, _ in sel.select(held.wait(clock())):
                    if key.data == "stdin":
                        if not os.read(sys.stdin.fileno(), 4096):
                            return 0
                        continue
                    for packet in queue.receive():
                        decision = policy.decide(packet.data)
                        counts.seen += 1
                        counts.held += 1
                        changed = True
                        if decision.delay > 0:
                            counts.delayed += 1
                            held.hold(clock() + decision.delay, packet.id, decision.verdict)
                        else:
                            give(packet.id, decision.verdict)
                for packet_id, verdict in held.due(clock()):
                    give(packet_id, verdict)
                    changed = True
                if changed:
                    _write_log(log, spec, counts, policy)
    except _Stop:
        return 0
    finally:
        # Held packets are passed, not lost with the socket: stopping must not look like loss.
        for packet_id, verdict in held.due(None):
            give(packet_id, verdict)
        _write_log(log, spec, counts, policy)
        queue.close()


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    import time

    sys.exit(serve(json.loads(sys.argv[1]), time.monotonic))
