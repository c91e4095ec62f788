"""The call-like flow (probe/wire/flow.py) on a fake clock: no sockets, no sleeps."""

from __future__ import annotations

import heapq
import ipaddress
import itertools
from collections.abc import Callable, Iterable

import pytest

from probe.wire import stun
from probe.wire.flow import (
    Answer,
    CallPlan,
    Flow,
    FlowStats,
    Shape,
    StunShape,
    compact,
    expand,
    is_cutoff,
)

# What the path does with one request: (seq, datagram) -> [(delay in s, datagram back), ...]
Path = Callable[[int, bytes], list[tuple[float, bytes]]]
RTT = 0.030
HERE = ipaddress.ip_address("192.0.2.7")


class EchoShape:
    """A shape simpler than STUN: request b"Q" + seq, answer b"A" + seq (b"E" for an error)."""

    def request(self, seq: int, size: int) -> tuple[bytes, bytes]:
        key = seq.to_bytes(4, "big")
        return (b"Q" + key).ljust(size, b"\x00"), key

    def answer(self, data: bytes) -> Answer | None:
        if len(data) >= 5 and data[:1] in (b"A", b"E"):
            return Answer(data[1:5], 500 if data[:1] == b"E" else None)
        return None


def echo(data: bytes, size: int = 60) -> bytes:
    return (b"A" + data[1:5]).ljust(size, b"\x00")


def stun_answer(data: bytes) -> bytes:
    request = stun.decode_message(data)
    return stun.encode_message(stun.binding_success(request, HERE, 3478))


def always(rtt: float = RTT) -> Path:
    return lambda seq, data: [(rtt, echo(data))]


def run(flow: Flow, path: Path, extra: Iterable[tuple[float, bytes]] = ()) -> tuple[FlowStats, float]:
    """Drive `flow` as a shell would, on a fake clock; `extra` are datagrams arriving at given
    times whatever was sent. Returns the stats and the time the flow was over."""
    order = itertools.count()
    events = [(at, next(order), data) for at, data in extra]
    heapq.heapify(events)
    now, seq = flow.start, 0
    while not flow.done(now):
        while (due := flow.next_send_at()) is not None and due <= now:
            data = flow.send(now)
            for delay, back in path(seq, data):
                heapq.heappush(events, (now + delay, next(order), back))
            seq += 1
        wake = flow.timer_at()
        if events and (wake is None or events[0][0] <= wake):  # a datagram at the deadline counts
            now, _, data = heapq.heappop(events)
            flow.receive(data, now)
        elif wake is None:
            break
        else:
            now = wake
    return flow.stats(), now


def flow(shape: Shape | None = None, silence: float | None = None, **plan: float) -> Flow:
    return Flow(CallPlan(**plan), shape or EchoShape(), start=1000.0, silence=silence)  # type: ignore[arg-type]


# --- the plan ------------------------------------------------------------------------------


def test_plan_defaults_cross_both_freezes() -> None:
    plan = CallPlan()
    assert (plan.rate, plan.size, plan.duration, plan.wait) == (50.0, 160, 5.0, 1.0)
    assert plan.count == 250
    assert plan.count * plan.size == 40_000  # past a ~16 KB freeze, upstream alone
    assert plan.count * 2 > 25  # past a 25-packet freeze many times over
    assert CallPlan(rate=30, duration=0.1).count == 3  # 3.0000000000000004 is three
    assert CallPlan(rate=1, duration=0.2).count == 1


@pytest.mark.parametrize("bad", [{"rate": 0}, {"duration": -1}, {"wait": float("nan")},
                                 {"size": 0}, {"rate": float("inf")}])
def test_plan_refuses_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CallPlan(**bad)  # type: ignore[arg-type]


# --- a clean flow --------------------------------------------------------------------------


def test_clean_stun_flow() -> None:
    sent: list[bytes] = []

    def server(seq: int, data: bytes) -> list[tuple[float, bytes]]:
        sent.append(data)
        return [(RTT, stun_answer(data))]

    stats, ended = run(flow(StunShape()), server)
    assert (stats.sent, stats.answered, stats.lost, stats.late, stats.loss) == (250, 250, 0, 0, 0.0)
    assert stats.pattern == "+250" and not stats.cutoff and stats.ended == "complete"
    assert stats.rtt_min_ms == stats.rtt_p50_ms == stats.rtt_p99_ms == stats.rtt_max_ms == 30.0
    assert stats.jitter_ms == 0.0
    assert stats.bytes_sent == 40_000 and stats.bytes_received == 250 * len(stun_answer(sent[0]))
    assert (stats.loss_bursts, stats.max_burst, stats.duplicates, stats.malformed) == (0, 0, 0, 0)
    assert stats.silent_after_packets is None and stats.silent_after_s is None
    assert stats.first_answer_s == pytest.approx(RTT)
    assert stats.span_s == pytest.approx(4.98)
    assert stats.answered_per_s == (50, 50, 50, 50, 50)
    # Over once the last answer is in, not a whole wait after the last request.
    assert ended == pytest.approx(1000.0 + 4.98 + RTT)
    # Every request a valid, padded Binding request with a fresh transaction id.
    assert {len(d) for d in sent} == {160}
    messages = [stun.decode_message(d) for d in sent]
    assert len({m.transaction_id for m in messages}) == 250
    for message in messages[:3]:
        assert (message.method, message.cls) == (stun.Method.BINDING, stun.Class.REQUEST)
        padding, fingerprint = message.attributes
        assert padding == stun.UnknownAttribute(stun.OPTIONAL_PADDING, bytes(160 - 32))
        assert fingerprint == stun.Fingerprint()


def test_sends_every_20_ms_on_a_fixed_grid() -> None:
    f = flow(duration=0.2)
    assert f.timer_at() == f.next_send_at() == 1000.0
    times: list[float] = []
    now = 1000.0
    while (due := f.next_send_at()) is not None:
        now = due + 0.001 * (len(times) % 3)  # a shell that wakes a little late, unevenly
        f.send(now)
        times.append(now)
        wake = f.timer_at()
        assert wake is not None
        if f.next_send_at() is not None:
            assert wake == pytest.approx(1000.0 + 0.02 * len(times))  # the grid, not now + 20 ms
    assert len(times) == 10
    assert f.timer_at() == pytest.approx(times[-1] + 1.0)  # then the last request's wait
    assert not f.done(times[-1] + 0.999) and f.done(times[-1] + 1.0)
    assert f.timer_at() is None
    with pytest.raises(RuntimeError):
        f.send(now)


def test_a_stalled_shell_catches_up() -> None:
    f = flow(duration=0.2)
    burst = []
    while (due := f.next_send_at()) is not None and due <= 1000.1:
        burst.append(f.send(1000.1))  # woke 100 ms late: six requests due at once
    assert len(burst) == 6


# --- loss, freezes, late answers -----------------------------------------------------------


def test_ten_percent_loss() -> None:
    stats, _ = run(flow(), lambda seq, data: [] if seq % 10 == 9 else [(RTT, echo(data))])
    assert (stats.answered, stats.lost, stats.loss) == (225, 25, 0.1)
    assert (stats.loss_bursts, stats.max_burst) == (25, 1)
    assert stats.pattern == "+9." * 25
    assert not stats.cutoff
    assert stats.silent_after_packets == 249  # the last request was lost: a one-request tail
    assert stats.answered_per_s == (45, 45, 45, 45, 45)


def freezer(packets: int | None = None, nbytes: int | None = None,
            answer_size: int = 60) -> Path:
    """A censor counting the flow's packets and bytes over both directions: a request is let
    through (with its answer) while fewer than `packets` packets and `nbytes` bytes have passed;
    after that, nothing."""
    passed = [0, 0]

    def path(seq: int, data: bytes) -> list[tuple[float, bytes]]:
        if (packets is not None and passed[0] >= packets) or (
                nbytes is not None and passed[1] >= nbytes):
            return []
        answer = echo(data, answer_size)
        passed[0] += 2
        passed[1] += len(data) + len(answer)
        return [(RTT, answer)]

    return path


def test_freeze_after_25_packets_counted_both_ways() -> None:
    stats, _ = run(flow(), freezer(packets=25))
    assert stats.answered == 13  # 13 requests + 13 answers: the 13th request is packet 25
    assert stats.pattern == "+13.237"
    assert stats.cutoff
    assert stats.silent_after_packets == 13
    assert stats.silent_after_bytes == 13 * 160
    assert stats.silent_after_bytes_received == 13 * 60
    assert stats.silent_after_s == pytest.approx(0.26)  # request 14 went at 260 ms
    assert (stats.loss_bursts, stats.max_burst) == (1, 237)
    assert stats.answered_per_s == (13, 0, 0, 0, 0)
    assert stats.ended == "complete"


def test_freeze_after_16_kb() -> None:
    stats, _ = run(flow(), freezer(nbytes=16 * 1024))
    # 160 up + 60 down a round trip: the 75th request finds 16,280 bytes passed, the 76th 16,500.
    assert stats.answered == 75 and stats.pattern == "+75.175" and stats.cutoff
    assert stats.silent_after_packets == 75
    assert stats.silent_after_bytes == 12_000 and stats.silent_after_bytes_received == 4_500
    assert stats.silent_after_s == pytest.approx(1.5)


def test_late_answers_are_counted_not_answered() -> None:
    stats, ended = run(flow(duration=1.0),
                       lambda seq, data: [(1.1 if seq % 10 == 0 else RTT, echo(data))])
    assert (stats.sent, stats.answered, stats.late, stats.lost) == (50, 45, 5, 5)
    assert stats.pattern == "L+9" * 5
    assert stats.loss == 0.1 and stats.rtt_max_ms == 30.0  # late ones are not in the RTTs
    assert stats.duplicates == 0 and stats.malformed == 0
    # Over once nothing is outstanding: the last late answer (request 40's, at 1.9 s) finds
    # every wait over or answered.
    assert ended == pytest.approx(1001.9)


def test_an_answer_exactly_at_the_end_of_its_wait_is_in_time() -> None:
    stats, _ = run(flow(duration=0.1, wait=0.5), lambda seq, data: [(0.5, echo(data))])
    assert stats.pattern == "+5" and stats.late == 0


def test_duplicates() -> None:
    # Each answer twice at once, and a third time after the request's wait is over (the slow
    # path: its key has been forgotten). The last request is lost, so the flow lasts until its
    # wait is over (0.18 + 0.3 s): third copies for requests 0-3 (at 0.41-0.47 s) make it.
    def path(seq: int, data: bytes) -> list[tuple[float, bytes]]:
        return [] if seq == 9 else [(RTT, echo(data)), (RTT, echo(data)), (0.41, echo(data))]

    stats, ended = run(flow(duration=0.2, wait=0.3), path)
    assert ended == pytest.approx(1000.48)
    assert (stats.answered, stats.duplicates, stats.late, stats.malformed) == (9, 9 + 4, 0, 0)
    assert stats.pattern == "+9."


def test_junk_is_counted_and_ignored() -> None:
    stranger = stun.encode_message(stun.binding_success(stun.binding_request(), HERE, 1))
    junk = [b"", b"\x00" * 3, b"GET / HTTP/1.1\r\n\r\n", stranger,
            b"A\xff\xff\xff\xff",  # well-formed for the shape, answers nothing we sent
            b"A\x00\x00"]  # too short to carry a key
    f = flow(StunShape(), duration=0.2)
    request = stun.encode_message(stun.binding_request())  # a request is no answer
    extra = [(1000.005, data) for data in [*junk[:4], request]]
    stats, _ = run(f, lambda seq, data: [(RTT, stun_answer(data))], extra)
    assert (stats.answered, stats.malformed, stats.duplicates) == (10, 5, 0)
    assert stats.bytes_received == sum(len(d) for _, d in extra) + 10 * len(stun_answer(
        stun.encode_message(stun.binding_request())))
    echo_flow = flow(duration=0.2)
    stats, _ = run(echo_flow, always(), [(1000.005, junk[4]), (1000.006, junk[5])])
    assert (stats.answered, stats.malformed) == (10, 2)


def test_error_responses_are_answers() -> None:
    def refuse(seq: int, data: bytes) -> list[tuple[float, bytes]]:
        request = stun.decode_message(data)
        return [(RTT, stun.encode_message(stun.error_response(request, 420, "Unknown Attribute")))]

    stats, _ = run(flow(StunShape(), duration=0.2), refuse)
    assert (stats.answered, stats.error_responses, stats.error_code) == (10, 10, 420)
    assert stats.pattern == "+10"
    stats, _ = run(flow(duration=0.2), lambda seq, data: [(RTT, b"E" + data[1:5])])
    assert (stats.answered, stats.error_responses, stats.error_code) == (10, 10, 500)


def test_jitter_is_rfc3550_over_the_round_trip() -> None:
    # RTTs 10, 26, 10, 26 ms: |D| is 16 ms each time. By hand, J += (|D| - J) / 16:
    # 0 -> 1.0 -> 1.0 + 15/16 = 1.9375 -> 1.9375 + (16 - 1.9375)/16 = 2.81640625 ms.
    rtts = [0.010, 0.026, 0.010, 0.026]
    stats, _ = run(flow(duration=0.08), lambda seq, data: [(rtts[seq], echo(data))])
    assert stats.answered == 4
    assert stats.jitter_ms == pytest.approx(2.816, abs=0.001)
    assert (stats.rtt_min_ms, stats.rtt_max_ms) == (10.0, 26.0)
    assert stats.rtt_p50_ms == pytest.approx(18.0)  # between the 2nd and 3rd of 10, 10, 26, 26


def test_jitter_follows_arrival_order() -> None:
    # Request 0 answered after 50 ms, request 1 after 10 ms: request 1's answer arrives first
    # (at 30 ms, before 50 ms), so the transits in arrival order are 10 then 50 ms.
    rtts = [0.050, 0.010]
    stats, _ = run(flow(duration=0.04), lambda seq, data: [(rtts[seq], echo(data))])
    assert stats.jitter_ms == pytest.approx(40 / 16, abs=0.001)
    assert stats.first_answer_s == pytest.approx(0.030)


def test_one_answer_has_no_jitter() -> None:
    stats, _ = run(flow(duration=0.1), lambda seq, data: [(RTT, echo(data))] if seq == 2 else [])
    assert stats.jitter_ms is None and stats.rtt_p90_ms == 30.0


def test_percentiles_interpolate() -> None:
    rtts = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    stats, _ = run(flow(duration=2.0), lambda seq, data: [(rtts[seq], echo(data))])
    assert (stats.rtt_min_ms, stats.rtt_max_ms) == (1.0, 100.0)
    assert stats.rtt_p50_ms == pytest.approx(50.5)
    assert stats.rtt_p90_ms == pytest.approx(90.1)
    assert stats.rtt_p99_ms == pytest.approx(99.01)


# --- stopping early ------------------------------------------------------------------------


def test_a_silent_path_costs_one_timeout() -> None:
    f = flow(silence=2.0)
    stats, ended = run(f, lambda seq, data: [])
    assert ended == 1002.0 and stats.ended == "silence"
    assert stats.sent == 100 and stats.answered == 0 and stats.loss == 1.0
    assert stats.pattern == ".100" and not stats.cutoff  # never answered: a timeout
    assert stats.rtt_p50_ms is None and stats.jitter_ms is None
    assert stats.silent_after_packets is None
    assert f.next_send_at() is None and f.timer_at() is None and f.done(0.0)


def test_silence_wakes_the_shell_between_sends() -> None:
    f = flow(silence=0.05, rate=2)  # a request every 500 ms; silence after 50 ms
    f.send(1000.0)
    assert f.timer_at() == 1000.05


def test_a_late_answer_is_not_silence() -> None:
    stats, _ = run(flow(silence=1.2, duration=2.0),
                   lambda seq, data: [(1.1, echo(data))] if seq == 0 else [])
    assert stats.ended == "complete" and stats.late == 1 and stats.sent == 100


def test_answers_then_silence_run_to_the_end() -> None:
    stats, _ = run(flow(silence=0.5), freezer(packets=25))
    assert stats.ended == "complete" and stats.sent == 250 and stats.cutoff


def test_icmp_error_before_any_answer_stops_the_flow() -> None:
    f = flow()
    f.send(1000.0)
    f.error("udp.refused", 1000.001)
    assert f.done(1000.001) and f.next_send_at() is None
    stats = f.stats()
    assert (stats.sent, stats.icmp_errors, stats.icmp_failure, stats.ended) == (
        1, 1, "udp.refused", "icmp")


def test_icmp_error_after_answers_is_only_counted() -> None:
    f = flow(duration=0.1)
    f.send(1000.0)
    f.receive(echo(EchoShape().request(0, 160)[0]), 1000.01)
    f.error("udp.unreachable", 1000.015)
    assert not f.done(1000.015) and f.next_send_at() is not None
    assert f.stats().icmp_errors == 1 and f.stats().ended == "running"


# --- patterns ------------------------------------------------------------------------------


def test_loss_bursts() -> None:
    lost = {10, 11, 12, *range(100, 105)}
    stats, _ = run(flow(), lambda seq, data: [] if seq in lost else [(RTT, echo(data))])
    assert stats.pattern == "+10.3+87.5+145"
    assert (stats.loss_bursts, stats.max_burst, stats.lost) == (2, 5, 8)
    assert not stats.cutoff and stats.silent_after_packets is None


@pytest.mark.parametrize(("pattern", "packed"), [
    ("", ""),
    ("+", "+"),
    ("+" * 120 + "." * 130, "+120.130"),
    ("+++.++", "+3.+2"),
    ("L+..L", "L+.2L"),
])
def test_compact_and_expand(pattern: str, packed: str) -> None:
    assert compact(pattern) == packed
    assert expand(packed) == pattern


@pytest.mark.parametrize("bad", ["x", "3+", "+-1", "+ 2"])
def test_expand_refuses_what_is_no_pattern(bad: str) -> None:
    with pytest.raises(ValueError):
        expand(bad)


@pytest.mark.parametrize(("pattern", "cut"), [
    ("+++", False),
    ("++......", True),
    ("+.....", True),
    ("+....", False),  # too few requests unanswered to call it a cut-off
    ("+.+.+.+.+.", False),  # loss, not a cut-off
    ("++++++++++++++++.....", False),  # 5 unanswered, but under 30 % of the exchange
    ("..........", False),  # never answered: a timeout
    ("+++++.....+", False),  # answers came back
    ("+.+.+..+.+.+" + "." * 6, False),  # 50 % loss explains six in a row (1 in 64)
    ("+.+.+..+.+.+" + "." * 12, True),  # ...but not twelve (1 in 4,096)
    ("+" * 13 + "L" * 10, True),  # late answers are no answers
])
def test_cutoff_rule(pattern: str, cut: bool) -> None:
    assert is_cutoff(pattern) is cut


# --- the STUN shape and memory -------------------------------------------------------------


@pytest.mark.parametrize(("size", "length"), [(160, 160), (150, 152), (29, 32), (28, 28),
                                              (10, 28), (1200, 1200)])
def test_stun_shape_sizes(size: int, length: int) -> None:
    data, key = StunShape().request(0, size)
    assert len(data) == length
    message = stun.decode_message(data)
    assert message.transaction_id == key and message.attributes[-1] == stun.Fingerprint()


def test_stun_shape_for_turn_sends_allocate() -> None:
    shape = StunShape(stun.Method.ALLOCATE)
    data, key = shape.request(0, 160)
    request = stun.decode_message(data)
    assert len(data) == 160 and request.method == stun.Method.ALLOCATE
    assert request.find(stun.RequestedTransport) == stun.RequestedTransport(stun.TRANSPORT_UDP)
    challenge = stun.error_response(request, 401, "Unauthorized", realm="r", nonce="n")
    assert shape.answer(stun.encode_message(challenge)) == Answer(key, 401)
    binding = stun.binding_success(stun.Message(stun.Method.BINDING, stun.Class.REQUEST, key),
                                   HERE, 1)
    assert shape.answer(stun.encode_message(binding)) is None  # another method: not ours
    with pytest.raises(ValueError):
        StunShape(0x009)


def test_stun_shape_reads_only_responses() -> None:
    shape = StunShape()
    data, key = shape.request(0, 160)
    assert shape.answer(data) is None  # our own request echoed back is no answer
    assert shape.answer(stun_answer(data)) == Answer(key)
    assert shape.answer(b"\x00" * 40) is None


def test_memory_stays_small() -> None:
    f = flow(duration=20.0)  # 1,000 requests
    most = 0

    def path(seq: int, data: bytes) -> list[tuple[float, bytes]]:
        nonlocal most
        most = max(most, len(f._pending))  # requests inside their wait: about rate x wait
        return [] if seq % 2 else [(RTT, echo(data))]

    stats, _ = run(f, path)
    assert stats.sent == 1000 and stats.answered == 500
    assert most <= 51
    assert len(f._keys) == 4 * 1000 and len(f._outcomes) == 1000
