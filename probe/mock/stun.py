"""A STUN/TURN mock server on real sockets (UDP, and TCP on the same port number) that
misbehaves on purpose: for the stun and turn layers' tests, `probe mock` and `probe demo`.

Behaviours (read per request, so they may be switched while running):
  ok          Binding -> success with the client's XOR-MAPPED-ADDRESS; Allocate -> 401 with
              REALM and NONCE, as a TURN server answers a request without credentials
  silent      read and never answer (a censor dropping the flow)
  lossy       drop a seeded fraction of requests (`loss`, default 0.3; `seed`, default 0)
  delay       answer after `delay` seconds (default 0.5)
  cutoff      answer each client's first `n` requests (default 5), then nothing
  malformed   answer with, in turn: a wrong transaction id, a wrong magic cookie, a truncation
  turn_401    answer every request, Binding too, with 401 + REALM + NONCE
  bad_request answer every request with 400 Bad Request (a STUN server that is not TURN)
  flood       before each valid answer send `flood` (default 20) junk datagrams: a hostile peer
              (over TCP only the junk that keeps the framing: STUN frames that fail to decode)
  reveal      echo the client's address everywhere it fits: XOR-MAPPED-ADDRESS, MAPPED-ADDRESS,
              SOFTWARE, REALM, NONCE, the reason phrase (the privacy test checks none leaks)
  freeze      the TSPU's flow freeze: per flow (client address and port), packets and bytes are
              counted over both directions; a request that arrives while fewer than `packets`
              (default 25) packets and `bytes` (default none: no byte limit) UDP payload bytes
              of its flow have passed is answered, and from the first one that arrives after
              that, every packet of the flow is dropped. With 25 packets that is 13 answered
              requests (the 13th is the 25th packet). A new source port starts afresh.
  gurgle      a call that "gurgles": each request is lost with probability `loss` (default
              0.15), its answer too (independently: 28 % of round trips lost at 0.15), and a
              surviving answer is delayed by a uniform 0..`jitter` seconds (default 0.08).
              Seeded by `seed`, so a given sequence of requests always meets the same fate.
  ratelimit   a busy public STUN server: per client IP, a steady token bucket of `rate` (default
              5) requests per second holding one token; a request without a token is ignored.
Padded requests (wire/stun.py's OPTIONAL_PADDING, as wire/flow.py's StunShape sends them) are
answered like any other: the padding is comprehension-optional and ignored.
Over TCP, frames are cut by the STUN length field (RFC 8489 section 6.2.2); a client whose
bytes do not frame as STUN is disconnected. Every datagram and connection is handled in its
own try: a hostile client never stops the server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import time
from typing import Any, ClassVar

from probe.mock.certs import TestCA
from probe.mock.server import MockServer
from probe.wire import stun

Answer = tuple[float, bytes]  # (delay in seconds, bytes to send)

_SOFTWARE = "probe mock STUN"
_REALM = "mock.test"


class StunServer(MockServer):
    """A STUN server (UDP and TCP); see the module docstring for the behaviours."""

    BEHAVIOURS: tuple[str, ...] = (
        "ok", "silent", "lossy", "delay", "cutoff", "malformed", "turn_401", "bad_request",
        "flood", "reveal", "freeze", "gurgle", "ratelimit",
    )
    OPTIONS: ClassVar[dict[str, Any]] = {
        "loss": 0.3, "seed": 0, "delay": 0.5, "n": 5, "flood": 20, "tcp": True,
        "packets": 25, "bytes": None, "jitter": 0.08, "rate": 5.0,
    }
    serves_udp = True

    def __init__(
        self,
        behaviour: str = "ok",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ca: TestCA | None = None,  # unused: STUN here is plain; accepted for the common signature
        name: str = "stun.mock.test",
        **options: Any,
    ) -> None:
        super().__init__(behaviour, host, port, name, options, self.OPTIONS)
        settings = {**self.OPTIONS, **options}
        self.loss = float(settings["loss"])
        # A gurgle loses 15 % each way unless told, whatever the behaviour the server started
        # with (behaviours are switched while running: lossy's 30 % must not leak into it).
        self.gurgle_loss = float(options.get("loss", 0.15))
        self.delay = float(settings["delay"])
        self.n = int(settings["n"])
        self.flood = int(settings["flood"])
        self.serves_tcp = bool(settings["tcp"])  # option tcp=False: UDP only
        self.freeze_packets = int(settings["packets"])
        self.freeze_bytes = None if settings["bytes"] is None else int(settings["bytes"])
        self.jitter = float(settings["jitter"])
        self.rate = float(settings["rate"])
        self._random = random.Random(settings["seed"])
        self.requests = 0  # requests decoded, whatever was done with them
        self.clients: set[tuple[str, int]] = set()  # who asked: the tests compare against it
        self._per_client: dict[tuple[str, int], int] = {}
        self._malformed_turn = 0
        self._flows: dict[tuple[str, int], list[int]] = {}  # freeze: [packets, bytes] passed
        self._buckets: dict[str, tuple[float, float]] = {}  # ratelimit: IP -> (tokens, when)

    # --- what to answer (shared by UDP and TCP) ------------------------------------------

    def answers(self, data: bytes, client: tuple[str, int],
                now: float | None = None) -> list[Answer]:
        """The datagrams (with delays) that answer `data` from `client` under the behaviour;
        `now` (time.monotonic() unless given) drives the rate limiter."""
        try:
            request = stun.decode_message(data)
        except stun.StunCodecError:
            return []
        if request.cls != stun.Class.REQUEST:
            return []
        self.requests += 1
        self.clients.add(client)
        seen = self._per_client.get(client, 0)
        self._per_client[client] = seen + 1
        behaviour = self.behaviour
        if behaviour == "silent":
            return []
        if behaviour == "lossy" and self._random.random() < self.loss:
            return []
        if behaviour == "cutoff" and seen >= self.n:
            return []
        if behaviour == "freeze" and not self._freeze_passes(client, len(data)):
            return []
        if behaviour == "ratelimit" and not self._token(client[0], now):
            return []
        if behaviour == "malformed":
            return [(0.0, self._malformed(request, client))]
        answer = stun.encode_message(self._response(request, client))
        if behaviour == "delay":
            return [(self.delay, answer)]
        if behaviour == "freeze":
            self._freeze_passes(client, len(answer), answer=True)
        if behaviour == "gurgle":
            draw = self._random.random
            loss = self.gurgle_loss
            if draw() < loss or draw() < loss:  # the request lost, or else its answer
                return []
            return [(draw() * self.jitter, answer)]
        if behaviour == "flood":
            return [(0.0, junk) for junk in self._junk(request)] + [(0.0, answer)]
        return [(0.0, answer)]

    def _response(self, request: stun.Message, client: tuple[str, int]) -> stun.Message:
        address = ipaddress.ip_address(client[0].split("%")[0])
        if self.behaviour == "bad_request":
            return stun.error_response(request, 400, "Bad Request", software=_SOFTWARE)
        if self.behaviour == "reveal":
            seen = f"{client[0]}:{client[1]}"
            if request.method == stun.Method.BINDING:
                return stun.Message(request.method, stun.Class.SUCCESS, request.transaction_id, (
                    stun.XorMappedAddress(address, client[1]),
                    stun.MappedAddress(address, client[1]),
                    stun.Software(f"you are {seen}"),
                    stun.Fingerprint(),
                ))
            return stun.error_response(request, 401, f"Unauthorized {seen}", realm=seen,
                                       nonce=seen, software=f"you are {seen}")
        if request.method == stun.Method.BINDING and self.behaviour != "turn_401":
            return stun.binding_success(request, address, client[1], software=_SOFTWARE)
        return stun.error_response(request, 401, "Unauthorized", realm=_REALM,
                                   nonce=os.urandom(8).hex(), software=_SOFTWARE)

    def _freeze_passes(self, client: tuple[str, int], size: int, answer: bool = False) -> bool:
        """Count one packet of `client`'s flow; whether it passes. A request is judged on what
        passed before it; its answer goes with it (the freeze acts on the next request)."""
        passed = self._flows.setdefault(client, [0, 0])
        limit = self.freeze_bytes
        if not answer and (passed[0] >= self.freeze_packets
                           or (limit is not None and passed[1] >= limit)):
            return False  # frozen: nothing passes any more, so the counts stay where they are
        passed[0] += 1
        passed[1] += size
        return True

    def _token(self, address: str, now: float | None) -> bool:
        """Take a token from `address`'s bucket: `rate` tokens a second, holding one at most."""
        now = time.monotonic() if now is None else now
        tokens, then = self._buckets.get(address, (1.0, now))
        tokens = min(1.0, tokens + max(0.0, now - then) * self.rate)
        if tokens < 1.0 - 1e-9:  # 0.2 s x 5/s may come out a hair under one token
            self._buckets[address] = (tokens, now)
            return False
        self._buckets[address] = (tokens - 1.0, now)
        return True

    def _malformed(self, request: stun.Message, client: tuple[str, int]) -> bytes:
        good = stun.encode_message(self._response(request, client))
        kind = self._malformed_turn % 3
        self._malformed_turn += 1
        if kind == 0:  # a well-formed answer to a request never sent
            other = stun.Message(request.method, stun.Class.REQUEST, stun.new_transaction_id())
            return stun.encode_message(self._response(other, client))
        if kind == 1:
            return good[:4] + b"\x21\x12\xa4\x43" + good[8:]
        return good[: len(good) // 2]

    def _junk(self, request: stun.Message) -> list[bytes]:
        junk = [os.urandom(self._random.randrange(1, 200)) for _ in range(self.flood)]
        # A few that look right to a lazy parser: the request's own id, broken inside.
        fake = stun.encode_message(stun.error_response(request, 401, realm="x", nonce="y"))
        junk[::4] = [fake[:-1] + bytes([fake[-1] ^ 0xFF])] * len(junk[::4])  # bad FINGERPRINT
        return junk

    # --- sockets -------------------------------------------------------------------------

    def datagram(self, data: bytes, addr: tuple[Any, ...]) -> None:
        client = (str(addr[0]), int(addr[1]))
        loop = asyncio.get_running_loop()
        for delay, answer in self.answers(data, client):
            if delay:
                loop.call_later(delay, self._sendto, answer, client)
            else:
                self._sendto(answer, client)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = (str(peer[0]), int(peer[1]))
        try:
            while True:
                header = await reader.readexactly(stun.HEADER_SIZE)
                size = stun.message_length(header)  # raises on bytes that are not STUN
                data = header + await reader.readexactly(size - stun.HEADER_SIZE)
                for delay, answer in self.answers(data, client):
                    if self.behaviour == "flood" and not _framed(answer):
                        continue  # junk that breaks TCP framing would end the test right there
                    if delay:
                        await asyncio.sleep(delay)
                    writer.write(answer)
                    await writer.drain()
        finally:  # the client left or sent what is not STUN: drop it (RST), serve the next
            writer.transport.abort()


def _framed(data: bytes) -> bool:
    try:
        return stun.message_length(data[: stun.HEADER_SIZE]) == len(data)
    except stun.StunCodecError:
        return False
