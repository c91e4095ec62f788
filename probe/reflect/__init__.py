"""`probe reflect`: the far end a research team runs, so a diagnosis is measured, not inferred.

Against third-party servers the probe can only infer; against a reflector it controls both ends:
the same address and port, one thing changed at a time (the shape of a datagram, the SNI, the
chunk size). Modules:

    probe/wire/echo.py        the datagrams and frames, sans-I/O (the probe side reuses it)
    probe/reflect/limits.py   rate limits, the flow table, the counts it logs (sans-I/O)
    probe/reflect/udp.py      what to answer to a datagram (sans-I/O) and the UDP sockets
    probe/reflect/tcp.py      TLS with any SNI, then echo / upload / download frames
    probe/reflect/server.py   sockets, token file, certificate, `main`

Promises, each kept in one place:

  * No amplification: a UDP reply is never larger than its request (udp.py checks every reply
    before it leaves); TCP downloads, larger than their request, go only to a peer that finished
    a handshake and are capped (tcp.py says why that is not an amplifier).
  * Strangers are ignored: with a token file, a datagram or connection without a valid tag gets
    nothing at all, not an error; plain STUN is then ignored too unless `open_stun`.
  * Bounded: per-source (/32, /64) and total packet and byte rates, an hourly volume per source,
    at most `max_flows` flows and `max_sources` sources (LRU, fixed size each), at most
    `max_connections` connections with a frame and a write buffer each.
  * No addresses kept: sources are keyed by a keyed hash that dies with the process; flows by a
    random session id; logs are counts only; asyncio's own error reports are reduced to the
    exception's type, since they may print a transport's peer.
  * Unprivileged, and stops cleanly on SIGINT/SIGTERM (exit 128 + signal, as `probe serve`).
"""

from probe.reflect.limits import Limits, Stats
from probe.reflect.server import (
    Certificate,
    Reflector,
    load_certificate,
    load_tokens,
    main,
    make_certificate,
    parse_listen,
    parse_ports,
)

__all__ = [
    "Certificate",
    "Limits",
    "Reflector",
    "Stats",
    "load_certificate",
    "load_tokens",
    "main",
    "make_certificate",
    "parse_listen",
    "parse_ports",
]
