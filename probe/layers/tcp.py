"""The tcp layer: connect to a target's address and port (`tcp://`, and under tls and https).

A connect is bounded by `job.timeout`. The phase records wall time, and the kernel's own RTT
estimate from TCP_INFO where the platform has it: wall time around connect() is inflated by the
event loop and by queues that earlier attempts left behind, the kernel's smoothed RTT is not
(CENSORSHIP.md, "tcp"). The remote address and port are recorded; the local address never is.
A failed or finished-with attempt is aborted with RST (SO_LINGER 0), so that no half-closed
state lingers in a censor's flow table to spoil the next attempt.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time

from probe.catalog import Job
from probe.failures import TIMEOUT, Failed, classify_exception
from probe.layers import Context, Layer
from probe.layers.dns import resolve
from probe.observations import DnsFacts, Facts, Observation, OtherAddresses, Sample, TcpFacts
from probe.scrub import remember_socket

OTHER_ADDRESSES_MAX = 3  # the diagnosis tries at most this many other addresses of the name

# struct tcp_info (linux/tcp.h): 8 one-byte fields, then u32s; tcpi_rtt is the 16th u32, in µs.
_TCPI_RTT_OFFSET = 8 + 15 * 4
_TCP_INFO = getattr(socket, "TCP_INFO", None)


def elapsed_ms(start: float) -> float:
    """Milliseconds since `start` (a time.perf_counter() value), rounded for the result file."""
    return round((time.perf_counter() - start) * 1000, 3)


def kernel_rtt_ms(sock: socket.socket) -> float | None:
    """The kernel's smoothed RTT for a connected socket, or None where TCP_INFO is missing."""
    if _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 128)
    except OSError:
        return None
    if len(info) < _TCPI_RTT_OFFSET + 4:
        return None
    rtt_us: int = struct.unpack_from("I", info, _TCPI_RTT_OFFSET)[0]
    return round(rtt_us / 1000, 3)


def abort(sock: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER on, zero seconds)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


async def _sock_connect(sock: socket.socket, address: str, port: int, timeout: float) -> None:
    """`loop.sock_connect(sock, (address, port))` under `asyncio.timeout(timeout)`, raising
    what they raise (OSError worded as asyncio words it, TimeoutError), with less machinery
    for an IP literal: one future that the socket's writability or the deadline completes,
    no task cancellation, no resolution step, no done-callbacks (the tcp layer's connects were
    a fifth of a 10,000-target run's CPU). Anything else (an IPv6 zone index) takes asyncio's
    own path, which resolves it."""
    loop = asyncio.get_running_loop()
    try:
        socket.inet_pton(sock.family, address)
    except OSError:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (address, port))
        return
    # As asyncio resolves an IP literal: (host, port), or (host, port, flowinfo, scope id).
    target = (address, port) if sock.family == socket.AF_INET else (address, port, 0, 0)
    try:
        sock.connect(target)
        return
    except (BlockingIOError, InterruptedError):
        pass  # in progress: the socket turns writable when it is done
    fd = sock.fileno()
    done: asyncio.Future[bool] = loop.create_future()
    loop.add_writer(fd, _settle, done, True)
    deadline = loop.call_later(timeout, _settle, done, False)
    try:
        connected = await done
    finally:
        deadline.cancel()
        loop.remove_writer(fd)
    if not connected:
        raise TimeoutError
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, f"Connect call failed {target}")


def _settle(future: asyncio.Future[bool], writable: bool) -> None:
    if not future.done():
        future.set_result(writable)


async def connect(
    job: Job, ctx: Context, sample: Sample, address: str, port: int
) -> socket.socket | None:
    """A connected non-blocking socket, recording a `tcp` phase; None when the connect failed."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    start = time.perf_counter()
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:  # e.g. no IPv6 on this host
        failure, message = classify_exception(exc)
        sample.add(TcpFacts(ok=False, ms=0.0, failure=failure, error=message, port=port))
        return None
    sock.setblocking(False)
    try:
        try:
            await _sock_connect(sock, address, port, job.timeout)
        except TimeoutError:
            raise Failed(TIMEOUT, f"no answer to SYN within {job.timeout:g} s") from None
    except (OSError, Failed) as exc:  # refused, unreachable, reset, timed out
        abort(sock)
        failure, message = classify_exception(exc)
        sample.add(TcpFacts(ok=False, ms=elapsed_ms(start), failure=failure, error=message,
                            address=address, port=port))
        return None
    except BaseException:  # cancelled: leave nothing half-open behind
        abort(sock)
        raise
    sample.add(TcpFacts(ok=True, ms=elapsed_ms(start), rtt_ms=kernel_rtt_ms(sock),
                        address=address, port=port))
    remember_socket(sock)  # our source port: never to be stored, whatever a server echoes
    return sock


def target_port(job: Job) -> int:
    port = job.endpoint.port
    assert port is not None, "the catalog gives every tcp/tls/https target a port"
    return port


async def measure(job: Job, ctx: Context) -> Sample:
    sample = Sample()
    address = await resolve(job, ctx, sample)
    if address is None:
        return sample
    sock = await connect(job, ctx, sample, address, target_port(job))
    if sock is not None:
        abort(sock)  # a connect is all tcp:// asks; RST leaves no state behind on either side
    return sample


async def other_addresses(job: Job, ctx: Context, observation: Observation
                          ) -> list[OtherAddresses]:
    """After every sample timed out at connect, whether other addresses of the name connect.

    One address silently dropped while its siblings answer points at an IP blackhole (or one
    dead server); all of them dropping points at the name or the whole service. Empty when it
    does not apply: an IP literal, `address:`, a name with a single address, or another failure.
    """
    if job.target.address or job.endpoint.is_ip:  # one address only: nothing else to try
        return []
    tried: list[str] = []
    answers: list[str] = []
    for sample in observation.samples:
        failed = sample.failed
        if failed is None or not isinstance(failed[1], TcpFacts) or failed[1].failure != TIMEOUT:
            return []
        tried.append(str(failed[1].address))
        dns = sample.get(DnsFacts)
        if dns is not None:
            answers = list(dns.answers)
    others = [a for a in dict.fromkeys(answers) if a not in tried][:OTHER_ADDRESSES_MAX]
    if not others:
        return []
    start = time.perf_counter()
    scratch = [Sample() for _ in others]
    socks = await asyncio.gather(*(
        connect(job, ctx, s, a, target_port(job)) for s, a in zip(scratch, others, strict=True)))
    connected = [a for a, sock in zip(others, socks, strict=True) if sock is not None]
    for sock in socks:
        if sock is not None:
            abort(sock)
    return [OtherAddresses(
        ok=bool(connected), ms=elapsed_ms(start), tried=others, connected=connected,
        failure=None if connected else TIMEOUT,
        error=None if connected else f"none of {len(others)} other addresses connected")]


async def diagnose(job: Job, ctx: Context, observation: Observation) -> list[Facts]:
    return list(await other_addresses(job, ctx, observation))


def budget(job: Job) -> float:
    """dns (three timeouts at most: UDP, TCP after truncation, a certificate check) and the
    connect; the engine gives `diagnose` (other addresses, at once) the same again."""
    return job.timeout * 4 + 1.0


LAYER = Layer(measure=measure, budget=budget, diagnose=diagnose)
