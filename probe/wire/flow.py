"""A call-like UDP flow, sans-I/O: requests at a voice rate and size on one 5-tuple, and its facts.

A call is not three requests: it is one UDP 5-tuple carrying a packet every 20 ms for minutes,
and the 2025 censors act on exactly that (CENSORSHIP.md): they freeze a flow after about 25
packets or 16 KB, or let it through with heavy loss and jitter ("gurgling"). `Flow` sends
requests the way a call sends frames and records what came back, one outcome per request.

Like aioquic's QuicConnection this module does no I/O and reads no clock: the caller (the shell,
in layers/stun.py) owns the socket and the timers and passes the time in (`now`, seconds on any
monotonic clock) to every call. What goes on the wire is a `Shape`'s business (`StunShape`:
padded STUN Binding requests); `Flow` only schedules, matches answers to requests by a key the
shape gives, and counts.

A shell, in outline (asyncio; `loop.time()` as the clock):

    flow = Flow(CallPlan(), StunShape(), start=loop.time(), silence=job.timeout)
    woken = asyncio.Event()

    class Protocol(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            flow.receive(data, loop.time())
            if flow.done(loop.time()):
                woken.set()  # the last answer is in: stop before the last wait is over
        def error_received(self, exc):
            flow.error(failure_of(exc), loop.time())  # an ICMP error, e.g. port unreachable
            woken.set()

    transport, _ = open_udp(Protocol, address, port)  # layers/udp.py: a connected socket
    while not flow.done(loop.time()):
        while (due := flow.next_send_at()) is not None and due <= loop.time():
            transport.sendto(flow.send(loop.time()))  # after a stall, catches up at once
        if (wake := flow.timer_at()) is None:
            break
        woken.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(woken.wait(), max(0.0, wake - loop.time()))
    transport.close()
    stats = flow.stats()

(tests/integration/test_stun_mock_calls.py runs this outline against the mock.)

Memory per flow stays small whatever its length: one byte of outcome, one float of send time, two
bytes of size and the key's bytes (12 for STUN) per request, one float per answer, and a dict of
the requests still inside their wait (rate x wait entries). No object per packet is kept.
"""

from __future__ import annotations

import functools
import math
import re
import struct
import zlib
from array import array
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from probe.wire import stun

__all__ = [
    "ANSWERED",
    "CUTOFF_CHANCE",
    "CUTOFF_MIN_SILENT",
    "CUTOFF_TAIL",
    "LATE",
    "NOTHING",
    "Answer",
    "CallPlan",
    "Flow",
    "FlowStats",
    "Shape",
    "StunShape",
    "compact",
    "expand",
    "is_cutoff",
]

# One character per request, in send order: the alphabet of patterns.
ANSWERED, LATE, NOTHING = "+", "L", "."  # answered in time / answered after its wait / nothing
_ANSWERED, _LATE, _NOTHING = (ord(c) for c in (ANSWERED, LATE, NOTHING))

CUTOFF_MIN_SILENT = 5  # a cut-off needs at least this many unanswered requests at the end...
CUTOFF_TAIL = 0.3  # ...covering at least this share of the exchange
CUTOFF_CHANCE = 0.001  # ...and the loss before it would produce such a tail this rarely


def is_cutoff(pattern: str) -> bool:
    """Answers at first, then silence to the end: at least CUTOFF_MIN_SILENT requests and
    CUTOFF_TAIL of the exchange unanswered after the last answer, and a silent tail that the
    loss seen before it would explain less than once in CUTOFF_CHANCE exchanges (at 50 % loss
    six lost in a row happen one time in 64: that is bad luck, not a cut-off).

    `pattern` is the expanded one, one character per request (`expand` undoes `compact`)."""
    last = pattern.rfind(ANSWERED)
    silent = len(pattern) - 1 - last
    if last < 0 or silent < CUTOFF_MIN_SILENT or silent < CUTOFF_TAIL * len(pattern):
        return False
    before = pattern[: last + 1]
    loss = sum(1 for c in before if c != ANSWERED) / len(before)
    return loss == 0 or silent >= math.log(CUTOFF_CHANCE) / math.log(loss)


_COMPACT = re.compile(r"([+L.])(\d*)")


def compact(pattern: str) -> str:
    """Run-length form of a pattern: each run is its character followed by its length, the
    length left out when it is 1. "+" answered, "L" late, "." nothing: "+120.130" is 120
    answered then 130 unanswered; "+3.+2" is three answered, one lost, two answered."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        j = i + 1
        while j < n and pattern[j] == pattern[i]:
            j += 1
        out.append(pattern[i] if j - i == 1 else f"{pattern[i]}{j - i}")
        i = j
    return "".join(out)


def expand(pattern: str) -> str:
    """The inverse of `compact` (ValueError for what is not a run-length pattern)."""
    if _COMPACT.sub("", pattern):
        raise ValueError(f"not a compact pattern: {pattern!r}")
    return "".join(char * int(count or 1) for char, count in _COMPACT.findall(pattern))


# --- what the flow sends -------------------------------------------------------------------


class Answer(NamedTuple):
    """A datagram that answers one of the flow's requests."""

    key: bytes  # the key `Shape.request` gave that request
    error: int | None = None  # None for a success; else the error code (still an answer)


class Shape(Protocol):
    """What the flow's datagrams are: the wire format, kept out of the scheduling."""

    def request(self, seq: int, size: int) -> tuple[bytes, bytes]:
        """Request number `seq` (from 0), about `size` bytes of UDP payload: (datagram, key).
        Keys must be unique within a flow and all of one length."""
        ...

    def answer(self, data: bytes) -> Answer | None:
        """The answer `data` is, or None for junk: not this protocol, or not an answer."""
        ...


_FINGERPRINT_HEADER = struct.pack("!HH", stun.ATTRIBUTE_TYPES[stun.Fingerprint], 4)


@functools.lru_cache(maxsize=64)  # (method, size): a catalog uses a few sizes
def _request_template(method: int, size: int) -> tuple[bytes, bytes]:
    """A request of `method` padded to `size`, encoded once with a zero transaction id and cut
    around the parts each request fills in: (the header's first 8 bytes, the attributes before
    FINGERPRINT). No attribute of a Binding or an Allocate request depends on the transaction
    id, so head + id + attributes + FINGERPRINT is what `stun.encode_message` writes, for a
    fraction of its cost (a flow sends 250 and more; every flow had its own template)."""
    if method == stun.Method.ALLOCATE:
        bare = stun.allocate_request(bytes(12))
    else:
        bare = stun.binding_request(bytes(12))
    bare = stun.Message(bare.method, bare.cls, bare.transaction_id,
                        (*bare.attributes, stun.Fingerprint()))
    natural = len(stun.encode_message(bare))
    padded = max(natural, size + (-size % 4))
    data = stun.encode_message(stun.pad(bare, padded))
    return data[:8], data[stun.HEADER_SIZE:-8]


class StunShape:
    """STUN Binding requests (or TURN Allocate requests) padded to the plan's size.

    Each request is a valid request with a fresh random transaction id (the key), an
    OPTIONAL_PADDING attribute of zeros and FINGERPRINT last: see `stun.pad` for why the padding
    is comprehension-optional. Sizes are rounded up to what STUN can carry: a multiple of 4, at
    least the bare request's size (28 bytes for a Binding with FINGERPRINT). Any response of the
    same method with a known transaction id is an answer, an error response too (a 420 or a 401
    proves a STUN server is there). The mapped address of an answer is never decoded into
    anything kept: only the type, transaction id and error code are read.
    """

    def __init__(self, method: int = stun.Method.BINDING) -> None:
        if method not in (stun.Method.BINDING, stun.Method.ALLOCATE):
            raise ValueError(f"StunShape sends Binding or Allocate requests, not {method:#x}")
        self.method = method
        self._answered = False  # whether answer() has recognized an answer yet

    def request(self, seq: int, size: int) -> tuple[bytes, bytes]:
        transaction_id = stun.new_transaction_id()
        head, body = _request_template(self.method, size)
        before = head + transaction_id + body
        # FINGERPRINT's value: CRC-32 of all before the attribute (RFC 8489 section 14.7).
        crc = (zlib.crc32(before) ^ stun.FINGERPRINT_XOR) & 0xFFFFFFFF
        return before + _FINGERPRINT_HEADER + crc.to_bytes(4, "big"), transaction_id

    def answer(self, data: bytes) -> Answer | None:
        # Checked alike either way. Decoded whole until the first answer: the stun layer then
        # finds that one among decode_message's recent messages when it reads the mapped
        # address; summarized after (half the CPU: a call flow matches 50 answers a second).
        try:
            if self._answered:
                message = stun.summarize(data)
            else:
                whole = stun.decode_message(data)
                error = whole.find(stun.ErrorCode)
                message = stun.Summary(whole.method, whole.cls, whole.transaction_id,
                                       error.code if error is not None else None)
        except stun.StunCodecError:
            return None
        if not message.is_response or message.method != self.method:
            return None
        self._answered = True
        if message.cls == stun.Class.ERROR:
            code = message.error_code
            return Answer(message.transaction_id, code if code is not None else 0)
        return Answer(message.transaction_id)


# --- the plan and the facts ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallPlan:
    """How a call uses the path; the defaults are a narrowband voice call's.

    rate: requests per second. 50: voice codecs send one frame every 20 ms (the RTP default
        packetization for G.711 and Opus, RFC 3551 section 4.5 and RFC 7587).
    size: bytes of UDP payload per request. 160: one 20 ms G.711 frame (8000 samples/s x 1 byte
        x 0.02 s); an Opus frame at 32-64 kbit/s with its SRTP overhead is 100-180 bytes.
    duration: seconds of sending. 5 s at 50/s is 250 requests and 40 KB up: past a freeze after
        25 packets (counted over both directions: 13 round trips) and past one after ~16 KB,
        with most of the flow left to show the silence (CENSORSHIP.md).
    wait: seconds an answer may take; one arriving later is "late", counted but not answered.
    """

    rate: float = 50.0
    size: int = 160
    duration: float = 5.0
    wait: float = 1.0

    def __post_init__(self) -> None:
        for name in ("rate", "duration", "wait"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"call plan: {name} must be a positive number, not {value!r}")
        if self.size <= 0:
            raise ValueError(f"call plan: size must be a positive number of bytes, not {self.size}")

    @property
    def count(self) -> int:
        """Requests in the flow: duration x rate (at least one)."""
        # Rounded first: 0.1 s x 30/s is 3.0000000000000004, three requests, not four.
        return max(1, math.ceil(round(self.duration * self.rate, 6)))

    def send_at(self, seq: int, start: float) -> float:
        """When request `seq` is due: on a fixed grid from `start`, so delays do not add up."""
        return start + seq / self.rate


@dataclass(frozen=True, slots=True)
class FlowStats:
    """What a flow saw. Counts are of requests unless said otherwise; final once the flow is done
    (before that, requests still inside their wait count as lost)."""

    sent: int  # requests sent
    answered: int  # requests answered within `wait` (error responses included)
    late: int  # requests answered only after their wait: counted among the lost
    lost: int  # sent - answered (late ones included)
    loss: float | None  # lost / sent, a fraction from 0 to 1; None when nothing was sent
    duplicates: int  # answers to a request already answered (or already late)
    malformed: int  # datagrams that answer no request of ours: not the protocol, or unknown key
    error_responses: int  # answers that are error responses (STUN 4xx/5xx)
    error_code: int | None  # the first error response's code
    icmp_errors: int  # ICMP errors the socket reported (port unreachable, prohibited...)
    icmp_failure: str | None  # the first one, as the shell named it (failures.py's codes)
    loss_bursts: int  # runs of consecutive unanswered requests (late ones included)
    max_burst: int  # the longest such run, in requests
    rtt_min_ms: float | None  # round-trip times of the answered requests, milliseconds;
    rtt_p50_ms: float | None  # percentiles interpolated linearly between ranks;
    rtt_p90_ms: float | None  # None when nothing was answered
    rtt_p99_ms: float | None
    rtt_max_ms: float | None
    # RFC 3550 section 6.4.1 interarrival jitter, milliseconds: over the answers in arrival
    # order, D is the difference of two consecutive transit times and J += (|D| - J) / 16.
    # For an echo the transit time is the RTT, so this is the jitter of the round trip (both
    # directions' variation). None with fewer than two answers.
    jitter_ms: float | None
    bytes_sent: int  # UDP payload bytes sent (requests)
    bytes_received: int  # UDP payload bytes received on the flow, junk included
    span_s: float  # seconds from the first request sent to the last
    first_answer_s: float | None  # seconds from the first request sent to the first answer
    # When the last request(s) went unanswered (None when the last request was answered):
    silent_after_packets: int | None  # requests sent up to the last answered one
    silent_after_bytes: int | None  # bytes those requests carried
    silent_after_bytes_received: int | None  # bytes received up to the last answer
    silent_after_s: float | None  # seconds into the flow the first unanswered request of the
    #                               silent tail was sent
    pattern: str  # the exchange, run-length compacted (`compact`): "+13.237"
    cutoff: bool  # answers, then silence to the end (`is_cutoff`)
    answered_per_s: tuple[int, ...]  # answers per second of the flow, by the request's slot:
    #                                  steady and low for a rate limiter, then zeros for a freeze
    ended: str  # "complete", "silence" (nothing answered within `silence`), "icmp"
    #             (nothing answered and the network refused), or "running"


# --- the flow ------------------------------------------------------------------------------


class Flow:
    """One call-like flow: `plan.count` requests from `start`, one every 1/rate seconds.

    `silence`: stop early when nothing at all has been answered (late answers and error
    responses count as answers) within this many seconds of the first request, so that a
    silent path costs one timeout and not the whole duration. None: never stop early for that.
    An ICMP error before any answer also stops the flow: the network has said why.
    """

    def __init__(self, plan: CallPlan, shape: Shape, start: float,
                 silence: float | None = None) -> None:
        self.plan = plan
        self.shape = shape
        self.start = start
        self.silence = silence
        count = plan.count
        self._count = count
        self._sent = 0
        self._outcomes = bytearray(b"." * count)  # one of _ANSWERED, _LATE, _NOTHING
        self._sent_at = array("d", bytes(8 * count))
        self._sizes = array("H", bytes(2 * count))
        self._keys = bytearray()  # request seq's key at [seq * key_size, (seq + 1) * key_size)
        self._key_size = 0
        self._pending: dict[bytes, int] = {}  # key -> seq, for requests inside their wait
        self._oldest = 0  # the oldest request that may still be in _pending
        self._rtts = array("d")  # seconds, in arrival order
        self._jitter = 0.0  # RFC 3550 J, seconds
        self._last_transit: float | None = None
        self._answered = 0
        self._late = 0
        self._duplicates = 0
        self._malformed = 0
        self._error_responses = 0
        self._error_code: int | None = None
        self._icmp_errors = 0
        self._icmp_failure: str | None = None
        self._bytes_sent = 0
        self._bytes_received = 0
        self._first_answer_at: float | None = None
        self._highest_answered = -1
        self._received_at_highest = 0
        self._ended: str | None = None

    # --- sending ---------------------------------------------------------------------------

    def next_send_at(self) -> float | None:
        """When the next request is due; None when all are sent or the flow has stopped."""
        if self._sent >= self._count or self._ended is not None:
            return None
        return self.plan.send_at(self._sent, self.start)

    def send(self, now: float) -> bytes:
        """The next request's datagram, recorded as sent at `now` (send it right away)."""
        if self.next_send_at() is None:
            raise RuntimeError("the flow has nothing left to send")
        self._prune(now)
        seq = self._sent
        data, key = self.shape.request(seq, self.plan.size)
        if not self._key_size:
            if not key:
                raise ValueError("a shape's keys must not be empty")
            self._key_size = len(key)
            self._keys = bytearray(self._key_size * self._count)
        elif len(key) != self._key_size:
            raise ValueError("a shape's keys must all be of one length")
        if len(data) > 0xFFFF:
            raise ValueError(f"a {len(data)}-byte datagram does not fit in UDP")
        size = self._key_size
        self._keys[seq * size:(seq + 1) * size] = key
        self._pending[key] = seq
        self._sent_at[seq] = now
        self._sizes[seq] = len(data)
        self._bytes_sent += len(data)
        self._sent += 1
        return data

    # --- receiving -------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        """A datagram arrived on the flow at `now`."""
        self._bytes_received += len(data)
        answer = self.shape.answer(data)
        if answer is None:
            self._malformed += 1
            return
        self._prune(now)
        seq = self._pending.pop(answer.key, None)
        if seq is None:
            seq = self._find(answer.key)
            if seq is None:
                self._malformed += 1  # well-formed, but answers nothing we sent
                return
        outcome = self._outcomes[seq]
        if outcome != _NOTHING:
            self._duplicates += 1
            return
        rtt = now - self._sent_at[seq]
        if rtt > self.plan.wait:
            self._outcomes[seq] = _LATE
            self._late += 1
            return
        self._outcomes[seq] = _ANSWERED
        self._answered += 1
        if self._first_answer_at is None:
            self._first_answer_at = now
        if answer.error is not None:
            self._error_responses += 1
            if self._error_code is None:
                self._error_code = answer.error
        if seq > self._highest_answered:
            self._highest_answered = seq
            self._received_at_highest = self._bytes_received
        # RFC 3550 section 6.4.1 (and its appendix A.8): the transit time of an echo is its RTT.
        if self._last_transit is not None:
            self._jitter += (abs(rtt - self._last_transit) - self._jitter) / 16
        self._last_transit = rtt
        self._rtts.append(rtt)

    def error(self, failure: str, now: float) -> None:
        """The socket reported an ICMP error (`failure`: its name, e.g. failures.py's code)."""
        self._icmp_errors += 1
        if self._icmp_failure is None:
            self._icmp_failure = failure
        if self._ended is None and not self._heard():
            self._ended = "icmp"

    def _heard(self) -> bool:
        return bool(self._answered or self._late)

    def _prune(self, now: float) -> None:
        """Forget the keys of requests whose wait is over (their answers are late now)."""
        size, wait = self._key_size, self.plan.wait
        while self._oldest < self._sent and self._sent_at[self._oldest] + wait <= now:
            start = self._oldest * size
            self._pending.pop(bytes(self._keys[start:start + size]), None)
            self._oldest += 1

    def _find(self, key: bytes) -> int | None:
        """The request a key belongs to, among all sent: the slow path, for answers that come
        after their wait or twice (junk with a well-formed header comes here too)."""
        size = self._key_size
        if len(key) != size:
            return None
        end = self._sent * size
        at = self._keys.find(key, 0, end)
        while at >= 0:
            if at % size == 0:
                return at // size
            at = self._keys.find(key, at + 1, end)
        return None

    # --- time ------------------------------------------------------------------------------

    def timer_at(self) -> float | None:
        """When the shell must call in again even if nothing arrives: the next send, the end of
        the silence allowance while nothing is answered, or the end of the last request's wait.
        None once the flow has stopped."""
        if self._ended is not None:
            return None
        times: list[float] = []
        due = self.next_send_at()
        if due is not None:
            times.append(due)
        elif self._sent:
            times.append(self._sent_at[self._sent - 1] + self.plan.wait)
        if self.silence is not None and not self._heard():
            first = self._sent_at[0] if self._sent else self.start
            times.append(first + self.silence)
        return min(times)

    def done(self, now: float) -> bool:
        """Whether the flow is over at `now`: every request sent and none still waiting for its
        answer, or stopped early (silence, ICMP). Once over, it stays over."""
        if self._ended is not None:
            return True
        if (self.silence is not None and self._sent and not self._heard()
                and now >= self._sent_at[0] + self.silence):
            self._ended = "silence"
            return True
        if self._sent < self._count:
            return False
        self._prune(now)
        if self._pending:
            return False
        self._ended = "complete"
        return True

    # --- facts -----------------------------------------------------------------------------

    @property
    def answered(self) -> int:
        """Requests answered in time so far."""
        return self._answered

    def rtts_ms(self) -> list[float]:
        """The round-trip times of the answers, in arrival order (ms): for short trains."""
        return [_ms(rtt) for rtt in self._rtts]

    def pattern(self) -> str:
        """The exchange so far, one character per request sent (ANSWERED, LATE, NOTHING)."""
        return self._outcomes[: self._sent].decode("ascii")

    def stats(self) -> FlowStats:
        sent, answered = self._sent, self._answered
        pattern = self.pattern()
        bursts = [len(run) for run in re.findall(r"[^+]+", pattern)]
        rtts = sorted(self._rtts)
        first = self._sent_at[0] if sent else self.start
        last = pattern.rfind(ANSWERED)
        silent = answered > 0 and last < sent - 1
        return FlowStats(
            sent=sent,
            answered=answered,
            late=self._late,
            lost=sent - answered,
            loss=(sent - answered) / sent if sent else None,
            duplicates=self._duplicates,
            malformed=self._malformed,
            error_responses=self._error_responses,
            error_code=self._error_code,
            icmp_errors=self._icmp_errors,
            icmp_failure=self._icmp_failure,
            loss_bursts=len(bursts),
            max_burst=max(bursts, default=0),
            rtt_min_ms=_ms(rtts[0]) if rtts else None,
            rtt_p50_ms=_percentile_ms(rtts, 0.50),
            rtt_p90_ms=_percentile_ms(rtts, 0.90),
            rtt_p99_ms=_percentile_ms(rtts, 0.99),
            rtt_max_ms=_ms(rtts[-1]) if rtts else None,
            jitter_ms=_ms(self._jitter) if len(rtts) > 1 else None,
            bytes_sent=self._bytes_sent,
            bytes_received=self._bytes_received,
            span_s=round(self._sent_at[sent - 1] - first, 6) if sent else 0.0,
            first_answer_s=(round(self._first_answer_at - first, 6)
                            if self._first_answer_at is not None else None),
            silent_after_packets=last + 1 if silent else None,
            silent_after_bytes=sum(self._sizes[: last + 1]) if silent else None,
            silent_after_bytes_received=self._received_at_highest if silent else None,
            silent_after_s=round(self._sent_at[last + 1] - first, 6) if silent else None,
            pattern=compact(pattern),
            cutoff=is_cutoff(pattern),
            answered_per_s=self._per_second(pattern),
            ended=self._ended or "running",
        )

    def _per_second(self, pattern: str) -> tuple[int, ...]:
        rate = self.plan.rate
        seconds = math.ceil(round(len(pattern) / rate, 6))
        counts = [0] * seconds
        for seq, outcome in enumerate(pattern):
            if outcome == ANSWERED:
                counts[int(seq / rate)] += 1
        return tuple(counts)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _percentile_ms(ordered: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default, statistics.quantiles'
    "inclusive" method), on a sorted list."""
    if not ordered:
        return None
    where = q * (len(ordered) - 1)
    low = math.floor(where)
    high = min(low + 1, len(ordered) - 1)
    return _ms(ordered[low] + (ordered[high] - ordered[low]) * (where - low))
