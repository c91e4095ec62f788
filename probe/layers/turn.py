"""The turn layer: `turn://HOST[:PORT][?transport=udp|tcp]`, one unauthenticated TURN Allocate.

A TURN server answers an Allocate without credentials with 401 Unauthorized, a REALM and a
NONCE (RFC 8656 section 7.1): that answer proves a TURN relay is reachable, without any
account. Calls fall back to these relays (WhatsApp calls work over TCP relays when UDP is cut,
CENSORSHIP.md), so `transport=tcp` tests the fallback path. Over UDP the request is
retransmitted on RFC 8489's schedule (500 ms, doubling) until `job.timeout`; over TCP it is sent
once on a connection from the tcp layer and the answer framed by its STUN length field.

Any other STUN answer (another error, a success) is recorded as `protocol_error` with its code:
something speaks STUN there, but not as a TURN server would. A `calls` target whose relay
answered as TURN goes on with a call-like flow to it (the stun layer's), recorded as a `stun`
layer of the same sample: over UDP only (over TCP the Allocate is the test). Text from the server (SOFTWARE,
the reason phrase) is kept in text fields the engine scrubs: a server may echo our address.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from probe.catalog import Job
from probe.failures import (
    EOF_,
    PROTOCOL_ERROR,
    TIMEOUT,
    Failed,
    classify_exception,
    classify_udp_error,
)
from probe.layers import Context, Layer
from probe.layers import stun as stun_layer
from probe.layers.dns import resolve
from probe.layers.tcp import abort, connect
from probe.layers.udp import open_udp
from probe.observations import Sample, TurnFacts
from probe.wire import stun

RTO_S = 0.5  # RFC 8489 section 6.2.1: first retransmission after 500 ms, then doubling
SLACK_S = 1.0
_MAX_FRAMES = 16  # answers that are not ours before a TCP peer is judged to be talking nonsense


def judge(answer: stun.Message, start: float, **facts: Any) -> TurnFacts:
    """The turn phase from the server's answer to our Allocate (sent first at `start`)."""
    error = answer.find(stun.ErrorCode)
    software = answer.find(stun.Software)
    facts.update(
        error_code=error.code if error else None,
        realm=answer.find(stun.Realm) is not None,
        nonce=answer.find(stun.Nonce) is not None,
        software=software.value if software else None,
    )
    ms = _ms(start)
    if error is not None and error.code == 401 and facts["realm"] and facts["nonce"]:
        return TurnFacts(ok=True, ms=ms, **facts)
    if error is not None:
        what = f"answered the Allocate with error {error.code} {error.reason}".rstrip()
    else:
        what = "answered the Allocate with success, without asking for credentials"
    if error is not None and error.code == 401:
        what += " but no REALM and NONCE"
    return TurnFacts(ok=False, ms=ms, failure=PROTOCOL_ERROR, error=what, **facts)


class _Allocate(asyncio.DatagramProtocol):
    def __init__(self, request: stun.Message) -> None:
        self.request = request
        self.answer: asyncio.Future[stun.Message] = asyncio.get_running_loop().create_future()
        self.malformed = 0
        self.broken: str | None = None  # why the first answer with our id did not decode

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            message = stun.decode_message(data)
        except stun.StunCodecError as exc:
            self.malformed += 1  # discarded (RFC 8489 6.3): a forgery may come before the answer
            if self.broken is None and stun.header_answers(data, self.request):
                self.broken = str(exc)
            return
        if not stun.is_response_to(message, self.request):
            self.malformed += 1
        elif not self.answer.done():
            self.answer.set_result(message)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


async def over_udp(address: str, port: int, timeout: float) -> TurnFacts:
    request = stun.allocate_request()
    data = stun.encode_message(request)
    start = time.perf_counter()
    facts: dict[str, Any] = {"transport": "udp", "port": port, "sent": 0}
    try:
        transport, protocol = open_udp(lambda: _Allocate(request), address, port)
    except OSError as exc:  # no route, no IPv6 here...
        failure, message = classify_udp_error(exc)
        return TurnFacts(ok=False, ms=_ms(start), failure=failure, error=message, **facts)
    try:
        async with asyncio.timeout(timeout):
            wait = RTO_S
            while not protocol.answer.done():
                transport.sendto(data)
                facts["sent"] += 1
                await asyncio.wait([protocol.answer], timeout=wait)
                wait *= 2
        answer = protocol.answer.result()  # raises what error_received stored (ICMP)
    except (OSError, TimeoutError) as exc:
        failure, message = classify_udp_error(exc)
        if failure == TIMEOUT:
            message = f"no answer to a TURN Allocate within {timeout:g} s (sent {facts['sent']}x)"
            if protocol.broken is not None:  # answered, but never in valid STUN
                failure, message = PROTOCOL_ERROR, _broken(protocol.broken, timeout)
        return TurnFacts(ok=False, ms=_ms(start), failure=failure, error=message,
                     malformed=protocol.malformed, **facts)
    finally:
        transport.close()
    return judge(answer, start, malformed=protocol.malformed, **facts)


def _broken(why: str, timeout: float) -> str:
    return (f"no valid answer to a TURN Allocate within {timeout:g} s; it was answered with a "
            f"message STUN forbids ({why})")


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


async def _read_frame(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    data = b""
    need = stun.HEADER_SIZE
    while len(data) < need:
        chunk = await loop.sock_recv(sock, need - len(data))
        if not chunk:
            raise Failed(EOF_, "connection closed before an answer to the Allocate")
        data += chunk
        if need == stun.HEADER_SIZE and len(data) == need:
            need = stun.message_length(data)
    return data


async def over_tcp(sock: socket.socket, port: int, timeout: float) -> TurnFacts:
    loop = asyncio.get_running_loop()
    request = stun.allocate_request()
    start = time.perf_counter()
    skipped = 0
    broken: str | None = None  # why the first answer with our id did not decode
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_sendall(sock, stun.encode_message(request))
            while True:
                frame = await _read_frame(loop, sock)  # raises when the framing is not STUN's
                try:
                    answer = stun.decode_message(frame)
                    if stun.is_response_to(answer, request):
                        break
                except stun.StunCodecError as exc:  # a bad frame in a good stream: skip it
                    if broken is None and stun.header_answers(frame, request):
                        broken = str(exc)
                skipped += 1
                if skipped >= _MAX_FRAMES:
                    raise Failed(PROTOCOL_ERROR, f"{skipped} STUN frames, none our answer")
    except stun.StunCodecError as exc:
        return TurnFacts(ok=False, ms=_ms(start), failure=PROTOCOL_ERROR,
                     error=f"not a STUN answer: {exc}", transport="tcp", port=port,
                     malformed=skipped)
    except (OSError, TimeoutError, Failed) as exc:
        failure, message = classify_exception(exc)
        if failure == TIMEOUT:
            message = f"no answer to a TURN Allocate over TCP within {timeout:g} s"
            if broken is not None:  # answered, but never in valid STUN
                failure, message = PROTOCOL_ERROR, _broken(broken, timeout)
        return TurnFacts(ok=False, ms=_ms(start), failure=failure, error=message,
                     transport="tcp", port=port, malformed=skipped)
    finally:
        abort(sock)
    return judge(answer, start, transport="tcp", port=port, malformed=skipped)


async def measure(job: Job, ctx: Context) -> Sample:
    sample = Sample()
    address = await resolve(job, ctx, sample)
    if address is None:
        return sample
    port = job.endpoint.port
    assert port is not None, "the catalog gives turn:// a default port"
    if job.endpoint.query.get("transport") == "tcp":
        sock = await connect(job, ctx, sample, address, port)
        if sock is None:
            return sample
        allocate = sample.add(await over_tcp(sock, port, job.timeout))
    else:
        allocate = sample.add(await over_udp(address, port, job.timeout))
    if job.call is not None and allocate.ok and job.endpoint.query.get("transport") != "tcp":
        # The relay answered as TURN: now a call's traffic to it, Binding requests at a voice
        # pace and size (without credentials there is no allocation to send media through).
        sample.add(await stun_layer.exchange(address, port, job.call, job.timeout, call=True,
                                             include_ip=ctx.include_ip))
    return sample


def budget(job: Job) -> float:
    """Name resolution, a TCP connect (transport=tcp), the Allocate's wait, and for a `calls`
    target the call-like flow (as the stun layer budgets it)."""
    flow = stun_layer.budget(job) - 3 * job.timeout if job.call is not None else 0.0
    return 3 * job.timeout + flow + SLACK_S


# A `calls` target's Allocate and call-like flow are one exchange: one flow, not one a sample.
LAYER = Layer(measure=measure, budget=budget, one_exchange=lambda job: job.call is not None)
