"""The asyncio shell of probe/wire/flow.py: sends a flow's requests on a connected UDP socket,
feeds it what comes back and wakes when it says to, with the loop's clock passed in.

Used by the stun and turn layers for every exchange: a short train (`attempts` requests, 200 ms
apart), a sustained one (`sustain:`) and a call-like flow (a `calls` target) are all one `Flow`
with a different plan, so loss, cut-off and jitter are worked out once, in the sans-I/O core,
and tested there with a fake clock. The first answer is kept, whole, so the layer can tell
whether a NAT sits between us and the server; it is decoded once, after the flow.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from probe.failures import classify_udp_error
from probe.layers.udp import open_udp
from probe.wire.flow import CallPlan, Flow, FlowStats, Shape, StunShape


class _Socket(asyncio.DatagramProtocol):
    """Feeds the flow what arrives and wakes the shell when the flow may be done."""

    def __init__(self, flow: Flow, loop: asyncio.AbstractEventLoop) -> None:
        self.flow = flow
        self.loop = loop
        self.waiter: asyncio.Future[None] | None = None
        self.first: bytes | None = None  # the first datagram that answered a request
        self.error: str | None = None  # the first ICMP error, in words

    def datagram_received(self, data: bytes, addr: Any) -> None:
        now = self.loop.time()
        before = self.flow.answered
        self.flow.receive(data, now)
        if self.first is None and self.flow.answered > before:
            self.first = data
        if self.flow.done(now):
            self.wake()

    def error_received(self, exc: Exception) -> None:
        failure, message = classify_udp_error(exc)
        if self.error is None:
            self.error = message
        self.flow.error(failure, self.loop.time())
        self.wake()

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


@dataclass(frozen=True)
class FlowRun:
    """What a flow saw, with what the shell adds: the first answer, the ICMP error's words,
    the socket's own address (for the NAT comparison, never kept)."""

    stats: FlowStats
    rtts_ms: list[float]
    first_answer: bytes | None
    icmp_error: str | None
    sockname: tuple[Any, ...] | None


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def run_flow(address: str, port: int, plan: CallPlan, silence: float | None,
                   shape: Shape | None = None) -> FlowRun:
    """Run one flow to address:port; raises OSError when no socket can be made (no route)."""
    loop = asyncio.get_running_loop()
    flow = Flow(plan, shape or StunShape(), start=loop.time(), silence=silence)
    transport, protocol = open_udp(lambda: _Socket(flow, loop), address, port)
    sockname = transport.get_extra_info("sockname")
    try:
        while True:
            now = loop.time()
            while (due := flow.next_send_at()) is not None and due <= now:
                transport.sendto(flow.send(now))
            if flow.done(now) or (wake := flow.timer_at()) is None:
                break
            waiter = protocol.waiter = loop.create_future()
            timer = loop.call_at(wake, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                protocol.waiter = None
    finally:
        transport.close()
    return FlowRun(flow.stats(), flow.rtts_ms(), protocol.first, protocol.error, sockname)
