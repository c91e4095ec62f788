"""The dns layer: resolve a target's host (a phase of every named target, and `dns://`).

Minimal first version: an IP literal or `address:` skips the phase; otherwise the system
resolver answers through getaddrinfo. The DNS issue replaces the inside with direct queries to
the configured resolver and a cross-check, keeping `resolve()` and `measure()` as they are.
"""

from __future__ import annotations

import asyncio
import socket
import time

from probe.catalog import Job
from probe.failures import classify_exception
from probe.layers import Context
from probe.observations import Phase, Sample


async def resolve(job: Job, ctx: Context, sample: Sample) -> str | None:
    """The address to connect to, recording a `dns` phase when a name was resolved.

    Returns None when resolution failed (the failed phase is in the sample).
    """
    if job.target.address:
        return job.target.address
    endpoint = job.endpoint
    if endpoint.is_ip:
        return endpoint.host
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    try:
        async with asyncio.timeout(job.timeout):
            infos = await loop.getaddrinfo(endpoint.host, None, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        failure, message = classify_exception(exc)
        if isinstance(exc, socket.gaierror):
            failure = "nxdomain" if exc.errno == socket.EAI_NONAME else "servfail"
        sample.add("dns", Phase(ok=False, ms=_ms(start), failure=failure, error=message))
        return None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    sample.add("dns", Phase(ok=True, ms=_ms(start), answers=addresses))
    return addresses[0]


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


async def measure(job: Job, ctx: Context) -> Sample:
    sample = Sample()
    await resolve(job, ctx, sample)
    return sample
