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
Over TCP, frames are cut by the STUN length field (RFC 8489 section 6.2.2); a client whose
bytes do not frame as STUN is disconnected. Every datagram and connection is handled in its
own try: a hostile client never stops the server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
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
        "flood", "reveal",
    )
    OPTIONS: ClassVar[dict[str, Any]] = {"loss": 0.3, "seed": 0, "delay": 0.5, "n": 5, "flood": 20, "tcp": True}
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
        self.delay = float(settings["delay"])
        self.n = int(settings["n"])
        self.flood = int(settings["flood"])
        self.serves_tcp = bool(settings["tcp"])  # option tcp=False: UDP only
        self._random = random.Random(settings["seed"])
        self.requests = 0  # requests decoded, whatever was done with them
        self.clients: set[tuple[str, int]] = set()  # who asked: the tests compare against it
        self._per_client: dict[tuple[str, int], int] = {}
        self._malformed_turn = 0

    # --- what to answer (shared by UDP and TCP) ------------------------------------------

    def answers(self, data: bytes, client: tuple[str, int]) -> list[Answer]:
        """The datagrams (with delays) that answer `data` from `client` under the behaviour."""
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
        if behaviour == "malformed":
            return [(0.0, self._malformed(request, client))]
        answer = stun.encode_message(self._response(request, client))
        if behaviour == "delay":
            return [(self.delay, answer)]
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
