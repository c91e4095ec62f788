"""Call-like flows (probe/wire/flow.py) against the STUN mock's call behaviours, on loopback.

A minimal shell drives the sans-I/O Flow on a real connected UDP socket (the layers' own
`open_udp`); the real shell is the stun layer's. Durations are short (1-2 s at 50 requests/s)
and nothing asserts on time taken: the facts asserted are counts the mock's behaviour fixes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from typing import Any

from probe.classify import emodel
from probe.failures import PORT_UNREACHABLE, classify_udp_error
from probe.layers.udp import open_udp
from probe.mock.stun import StunServer
from probe.wire.flow import CallPlan, Flow, FlowStats, StunShape

Run_ = Callable[..., Any]


async def call(port: int, plan: CallPlan, silence: float | None = None,
               host: str = "127.0.0.1") -> FlowStats:
    """One call-like flow to host:port, driven to its end."""
    loop = asyncio.get_running_loop()
    flow = Flow(plan, StunShape(), start=loop.time(), silence=silence)
    woken = asyncio.Event()

    class Shell(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            flow.receive(data, loop.time())
            if flow.done(loop.time()):
                woken.set()

        def error_received(self, exc: Exception) -> None:
            flow.error(classify_udp_error(exc)[0], loop.time())
            woken.set()

    transport, _ = open_udp(Shell, host, port)
    try:
        while not flow.done(loop.time()):
            while (due := flow.next_send_at()) is not None and due <= loop.time():
                transport.sendto(flow.send(loop.time()))
            wake = flow.timer_at()
            if wake is None:
                break
            woken.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), max(0.0, wake - loop.time()))
    finally:
        transport.close()
    return flow.stats()


async def against(behaviour: str, plan: CallPlan, flows: int = 1, silence: float | None = None,
                  **options: Any) -> tuple[list[FlowStats], StunServer]:
    """`flows` flows one after the other (each on a new source port) against a fresh mock."""
    server = StunServer(behaviour, tcp=False, **options)
    await server.start()
    try:
        return [await call(server.port, plan, silence) for _ in range(flows)], server
    finally:
        await server.stop()


SHORT = CallPlan(duration=0.5, wait=0.3)  # 25 requests
ONE_SECOND = CallPlan(duration=1.0, wait=0.3)  # 50 requests
TWO_SECONDS = CallPlan(duration=2.0, wait=0.5)  # 100 requests


def test_padded_binding_requests_are_answered(run: Run_) -> None:
    (stats,), server = run(against("ok", SHORT))
    assert (stats.sent, stats.answered, stats.pattern, stats.cutoff) == (25, 25, "+25", False)
    assert stats.bytes_sent == 25 * 160 and stats.malformed == 0 and stats.error_responses == 0
    assert stats.ended == "complete"
    assert server.requests == 25 and len(server.clients) == 1  # one 5-tuple for the whole call
    quality = emodel.from_flow(stats)
    assert quality is not None and not quality.poor


def test_freeze_cuts_the_flow_after_25_packets_and_a_new_port_starts_afresh(run: Run_) -> None:
    (first, second), server = run(against("freeze", ONE_SECOND, flows=2))
    for stats in (first, second):
        assert stats.sent == 50
        assert stats.answered == 13  # 13 requests and 13 answers: the 13th request is packet 25
        assert stats.pattern == "+13.37" and stats.cutoff
        assert stats.silent_after_packets == 13 and stats.silent_after_bytes == 13 * 160
        assert stats.answered_per_s == (13,)
    assert server.requests == 100 and len(server.clients) == 2


def test_freeze_after_bytes(run: Run_) -> None:
    (stats,), _ = run(against("freeze", ONE_SECOND, packets=1000, bytes=2000))
    answer_size = stats.bytes_received // stats.answered
    # A request passes while fewer than 2000 bytes have: (k - 1) round trips < 2000 bytes.
    assert stats.answered == math.ceil(2000 / (160 + answer_size))
    assert stats.cutoff
    assert stats.silent_after_bytes is not None and stats.silent_after_bytes_received is not None
    assert stats.silent_after_bytes + stats.silent_after_bytes_received >= 2000


def test_gurgle_loses_both_ways_and_jitters(run: Run_) -> None:
    (stats,), _ = run(against("gurgle", TWO_SECONDS))
    assert stats.sent == 100
    assert stats.loss is not None and 0.15 <= stats.loss <= 0.45  # 1 - 0.85^2 = 28 % expected
    assert stats.late == 0 and not stats.cutoff
    assert stats.jitter_ms is not None and stats.jitter_ms >= 10  # uniform 0-80 ms: J ~ 27 ms
    assert stats.loss_bursts > 5  # scattered, not one silent tail
    quality = emodel.from_flow(stats)
    assert quality is not None and quality.poor
    assert quality.causes[0].what == "loss"


def test_gurgle_keeps_its_own_loss_when_switched_to() -> None:
    server = StunServer("lossy")  # lossy's loss is 0.3; a gurgle's default 0.15 each way
    server.behaviour = "gurgle"  # as `probe demo` switches a running world
    shape = StunShape()
    answered = sum(bool(server.answers(shape.request(i, 160)[0], ("127.0.0.1", 5000)))
                   for i in range(2000))
    assert 0.66 <= answered / 2000 <= 0.78  # 0.85 x 0.85 = 0.7225


def test_ratelimit_answers_a_steady_few_per_second(run: Run_) -> None:
    (stats,), _ = run(against("ratelimit", TWO_SECONDS))
    assert stats.sent == 100
    assert 9 <= stats.answered <= 12  # 5 a second, one token at a time
    assert all(4 <= n <= 7 for n in stats.answered_per_s), stats.answered_per_s
    assert not stats.cutoff  # answers to the end: a rate, not a freeze
    assert stats.max_burst <= 12  # one answer every ~10 requests, never a long silence


def test_ratelimit_token_bucket_on_a_fake_clock() -> None:
    server = StunServer("ratelimit")
    request = StunShape().request(0, 160)[0]
    here, there = ("127.0.0.1", 40000), ("127.0.0.2", 40000)
    answered = [bool(server.answers(request, here, now=100 + i * 0.02)) for i in range(100)]
    assert answered == [True, False, False, False, False, False, False, False, False, False] * 10
    # 10 ms after request 99 (which found 0.9 tokens): 0.95 tokens, so the same address waits,
    # from another port too, while another address has a bucket of its own.
    assert not server.answers(request, ("127.0.0.1", 40001), now=101.99)
    assert server.answers(request, there, now=101.99)


def test_ratelimit_is_per_client_address(run: Run_) -> None:
    async def two_at_once() -> list[FlowStats]:
        server = StunServer("ratelimit", tcp=False)
        await server.start()
        try:
            return list(await asyncio.gather(call(server.port, ONE_SECOND),
                                             call(server.port, ONE_SECOND)))
        finally:
            await server.stop()

    first, second = run(two_at_once())
    # Two ports, one address: one bucket between them, about 5 answers in the second.
    assert 4 <= first.answered + second.answered <= 8


def test_a_silent_server_costs_one_silence(run: Run_) -> None:
    (stats,), server = run(against("silent", ONE_SECOND, silence=0.2))
    assert stats.ended == "silence" and stats.answered == 0
    assert stats.sent < 50 and server.requests == stats.sent


def test_a_closed_port_stops_at_the_icmp_error(run: Run_) -> None:
    async def closed_port() -> FlowStats:
        server = StunServer("ok", tcp=False)
        await server.start()
        port = server.port
        await server.stop()  # nothing listens there now: the kernel answers port unreachable
        return await call(port, ONE_SECOND)

    stats = run(closed_port())
    assert stats.ended == "icmp" and stats.icmp_failure == PORT_UNREACHABLE
    assert stats.answered == 0 and stats.sent < 50
