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
import contextlib
import ipaddress
import os
import random
import socket
from typing import Any, ClassVar

from probe.mock.certs import TestCA
from probe.wire import stun

Answer = tuple[float, bytes]  # (delay in seconds, bytes to send)

_SOFTWARE = "probe mock STUN"
_REALM = "mock.test"
_BIND_TRIES = 20  # UDP port 0 -> that port number on TCP too; retried if TCP has it taken


class StunServer:
    """A STUN server (UDP and TCP); see the module docstring for the behaviours."""

    BEHAVIOURS: tuple[str, ...] = (
        "ok", "silent", "lossy", "delay", "cutoff", "malformed", "turn_401", "bad_request",
        "flood", "reveal",
    )
    OPTIONS: ClassVar[dict[str, Any]] = {"loss": 0.3, "seed": 0, "delay": 0.5, "n": 5, "flood": 20, "tcp": True}

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
        if behaviour not in self.BEHAVIOURS:
            raise ValueError(f"unknown stun behaviour {behaviour!r} (one of {self.BEHAVIOURS})")
        unknown = set(options) - set(self.OPTIONS)
        if unknown:
            raise ValueError(f"unknown stun option(s) {', '.join(sorted(unknown))}")
        settings = {**self.OPTIONS, **options}
        self.behaviour = behaviour
        self.host = host
        self.port = port
        self.name = name
        self.loss = float(settings["loss"])
        self.delay = float(settings["delay"])
        self.n = int(settings["n"])
        self.flood = int(settings["flood"])
        self.tcp = bool(settings["tcp"])
        self._random = random.Random(settings["seed"])
        self.requests = 0  # requests decoded, whatever was done with them
        self.clients: set[tuple[str, int]] = set()  # who asked: the tests compare against it
        self._per_client: dict[tuple[str, int], int] = {}
        self._malformed_turn = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

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

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for _ in range(_BIND_TRIES if self.port == 0 else 1):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(self.host, self.port), family=family)
            port = transport.get_extra_info("sockname")[1]
            if not self.tcp:
                break
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, self.host, port,
                                                       family=family)
                break
            except OSError:
                transport.close()
                if self.port != 0:
                    raise
        else:
            raise OSError(f"no port free on both UDP and TCP at {self.host}")
        self._udp = transport
        self.port = port

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            # Aborting ends each handler's read; cancelling a stream handler instead trips
            # asyncio's own done-callback on Python 3.11 (it calls exception() on it).
            for writer in list(self._writers):
                writer.transport.abort()
            if self._tasks:
                _, pending = await asyncio.wait(list(self._tasks), timeout=1.0)
                for task in pending:
                    task.cancel()
            with contextlib.suppress(Exception):
                await self._tcp.wait_closed()
            self._tcp = None

    def _send_udp(self, data: bytes, client: tuple[str, int]) -> None:
        if self._udp is not None and not self._udp.is_closing():
            self._udp.sendto(data, client)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
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
        except (OSError, EOFError, asyncio.IncompleteReadError, stun.StunCodecError):
            pass  # the client left or sent what is not STUN: drop it, serve the next
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.transport.abort()


def _framed(data: bytes) -> bool:
    try:
        return stun.message_length(data[: stun.HEADER_SIZE]) == len(data)
    except stun.StunCodecError:
        return False


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: StunServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        client = (str(addr[0]), int(addr[1]))
        try:
            answers = self.server.answers(data, client)
        except Exception:  # noqa: BLE001 - a mock outlives any client; tests see no answer
            return
        loop = asyncio.get_running_loop()
        for delay, answer in answers:
            if delay:
                loop.call_later(delay, self.server._send_udp, answer, client)
            else:
                self.server._send_udp(answer, client)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors about clients that went away
