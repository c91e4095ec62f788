"""`probe reflect` on loopback: STUN and every echo shape answered with the right counters,
hostile inputs (junk, floods, oversize, wrong tokens, many flows) never answered larger than
they came, TCP echo / upload / download with both sides' counters, and the process itself."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from probe.reflect import Limits, Reflector, load_certificate, main, parse_ports
from probe.reflect.limits import Sources, Stats
from probe.reflect.udp import PADDING, UdpCore
from probe.wire import echo, stun
from probe.wire.echo import Counters, DownloadStatus, EchoReply, EchoRequest, FrameType, Shape

HOST = "127.0.0.1"
TOKEN = b"0123456789abcdef-the-team-secret"
Run = Callable[..., Any]
CHECKED = [0]  # replies checked against their request in this module (a count: memory is measured)


@pytest.fixture(autouse=True)
def replies_never_larger(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every answer the UDP core gives, in every test here, is checked against its request."""
    original = UdpCore.handle

    def checked(self: UdpCore, data: bytes, addr: Any, port: int, now: float) -> bytes | None:
        reply = original(self, data, addr, port, now)
        if reply is not None:
            CHECKED[0] += 1
            assert len(reply) <= len(data), f"{len(reply)}-byte reply to {len(data)} bytes"
        return reply

    monkeypatch.setattr(UdpCore, "handle", checked)
    yield


class Client(asyncio.DatagramProtocol):
    """A UDP client socket: what arrives goes into a queue."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.replies.put_nowait(data)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def send(self, data: bytes, port: int) -> None:
        assert self.transport is not None
        self.transport.sendto(data, (HOST, port))

    async def ask(self, data: bytes, port: int) -> bytes:
        self.send(data, port)
        return await asyncio.wait_for(self.replies.get(), 5)

    async def nothing_before(self, probe: bytes, port: int,
                             keys: tuple[bytes, ...] = (echo.PUBLIC_KEY,)) -> None:
        """What was sent before gets no answer: the server handles one socket's datagrams in
        order, so the first thing back must be the answer to this valid `probe`."""
        reply = await self.ask(probe, port)
        seq = echo.decode(probe, keys).message.seq
        assert echo.decode(reply, keys, replies=True).message.seq == seq
        assert self.replies.empty()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def client(host: str = HOST) -> Client:
    _, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        Client, local_addr=(host, 0))
    return protocol


def request(seq: int, shape: Shape = Shape.RANDOM, size: int = 0, session: bytes = b"s" * 8,
            key: bytes = echo.PUBLIC_KEY, **fields: int) -> bytes:
    return echo.encode_request(EchoRequest(session, seq, **fields), shape, size, key)


# --- UDP: plain STUN -----------------------------------------------------------------------


def test_plain_stun_binding(run: Run) -> None:
    async def go() -> None:
        async with Reflector([HOST], [0], []) as server:
            port, c = server.udp_bound[0], await client()
            bare = stun.binding_request()
            answer = stun.decode_message(await c.ask(stun.encode_message(bare), port))
            assert stun.is_response_to(answer, bare) and answer.cls == stun.Class.SUCCESS
            assert answer.attributes == ()  # 20 bytes in, 20 out: no room for the address
            with_fp = stun.Message(1, stun.Class.REQUEST, stun.new_transaction_id(),
                                   (stun.Fingerprint(),))
            answer = stun.decode_message(await c.ask(stun.encode_message(with_fp), port))
            assert answer.attributes == (stun.Fingerprint(),)
            padded = stun.Message(1, stun.Class.REQUEST, stun.new_transaction_id(),
                                  (stun.UnknownAttribute(PADDING, bytes(200)), stun.Fingerprint()))
            data = stun.encode_message(padded)
            reply = await c.ask(data, port)
            answer = stun.decode_message(reply)
            assert len(reply) == len(data)  # RFC 5780: padded up to the request's size
            mapped = answer.find(stun.XorMappedAddress)
            assert mapped is not None and (str(mapped.address), mapped.port) == (HOST, c.port)
            assert answer.attributes[-1] == stun.Fingerprint()
            # Not answered: an Allocate (no TURN here), an indication, a success response.
            for other in (stun.allocate_request(),
                          stun.Message(1, stun.Class.INDICATION, stun.new_transaction_id()),
                          stun.binding_success(bare, mapped.address, 1)):
                c.send(stun.encode_message(other), port)
            await c.nothing_before(request(1), port)
            assert server.stats.not_for_us == 3 and server.stats.plain_stun == 3
            c.close()

    run(go())


# --- UDP: every shape, counters ------------------------------------------------------------


@pytest.mark.parametrize("shape", list(Shape))
def test_each_shape_echoes_with_counters(shape: Shape, run: Run) -> None:
    async def go() -> None:
        async with Reflector([HOST], [0, 0], []) as server:
            c, session = await client(), echo.new_session()
            sent = received = 0
            sizes = [echo.min_request_size(shape), 200, 1200, 400]
            for seq, size in enumerate(sizes):
                sent += size
                data = request(seq, shape, size, session, sent_packets=seq + 1, sent_bytes=sent)
                reply = await c.ask(data, server.udp_bound[0])
                decoded = echo.decode(reply, replies=True)
                assert decoded.shape is shape and len(reply) == size  # the shape survives
                assert decoded.message == EchoReply(session, seq, seq + 1, sent, seq, received)
                received += len(reply)
                if shape is Shape.STUN:
                    mapped = stun.decode_message(reply).find(stun.XorMappedAddress)
                    assert mapped is not None and mapped.port == c.port
                if shape is Shape.WHATSAPP:
                    assert stun.decode_message(reply).method == echo.WHATSAPP_REPLY
            # A smaller reply on request, and a flow of its own on the other port.
            small = request(9, shape, 1200, session, reply_size=echo.smallest_reply(shape))
            reply = await c.ask(small, server.udp_bound[0])
            assert len(reply) == echo.smallest_reply(shape)
            other = echo.decode(await c.ask(request(0, shape, 0, session), server.udp_bound[1]),
                                replies=True).message
            assert isinstance(other, EchoReply) and other.received_packets == 1
            c.close()

    run(go())


def test_counters_tell_the_reflector_kept_replies_back() -> None:
    """When a limit keeps a reply back, the flow still counts the request: the next reply says
    received > sent + 1, so the probe does not blame the network (fake clock, no socket)."""
    limits = Limits(source_bytes=1000, source_byte_burst=1000)
    core = UdpCore([echo.PUBLIC_KEY], Sources(limits, 0.0), Stats())
    addr = (HOST, 5000)
    answers = [core.handle(request(seq, size=400), addr, 3478, 0.0) for seq in range(4)]
    assert [a is not None for a in answers] == [True, True, False, False]
    assert core.stats.over_budget == 2
    later = core.handle(request(4, size=400), addr, 3478, 10.0)  # the budget has refilled
    assert later is not None
    assert echo.decode(later, replies=True).message == EchoReply(b"s" * 8, 4, 5, 2000, 2, 800)


def test_rate_limit_is_exact_with_a_fake_clock() -> None:
    limits = Limits(source_packets=10, source_packet_burst=20)
    core = UdpCore([echo.PUBLIC_KEY], Sources(limits, 0.0), Stats())
    first = [core.handle(request(i), (HOST, 1), 1, 0.0) for i in range(100)]
    assert sum(a is not None for a in first) == 20
    second = [core.handle(request(i), (HOST, 2), 1, 1.0) for i in range(100)]  # same /32
    assert sum(a is not None for a in second) == 10
    other = core.handle(request(0), ("127.0.0.2", 1), 1, 1.0)  # another source is not limited
    assert other is not None and core.stats.rate_limited == 170
    v6 = [core.handle(request(i), (f"2001:db8::{i}", 1), 1, 2.0) for i in range(30)]
    assert sum(a is not None for a in v6) == 20  # one /64 is one source


# --- UDP: hostile inputs -------------------------------------------------------------------


def test_junk_oversize_and_malformed_get_nothing(run: Run) -> None:
    async def go() -> None:
        async with Reflector([HOST], [0], []) as server:
            port, c = server.udp_bound[0], await client()
            rng = random.Random(20)
            good = request(1, size=200)
            junk = [rng.randbytes(rng.randrange(0, 1500)) for _ in range(1000)]
            junk += [good[:-1], good + b"\x00", good[:100],  # cut or padded on the way
                     request(1, size=55),  # too small for any reply of its shape
                     stun.encode_message(stun.binding_request())[:19],
                     bytes(3000), bytes(65000)]  # oversize
            for shape in Shape:  # a reply sent to the reflector is never answered
                junk.append(echo.encode_reply(EchoReply(b"s" * 8, 1, 1, 1, 0, 0), shape,
                                              echo.smallest_reply(shape), nonce=b"t" * 12
                                              if shape in (Shape.STUN, Shape.WHATSAPP)
                                              else b"q" * 8 if shape is Shape.TELEGRAM else None))
            stats = server.stats
            for sent, data in enumerate(junk, 1):
                c.send(data, port)
                # one at a time: the socket buffer is finite, and a busy machine is slow
                while stats.junk + stats.not_for_us + stats.too_small + stats.oversize < sent:
                    await asyncio.sleep(0.001)
            await c.nothing_before(request(2, size=100), port)
            assert stats.oversize == 2 and stats.too_small == 1
            assert stats.answered == 1 and stats.errors == 0
            assert stats.junk + stats.not_for_us + stats.too_small + stats.oversize == len(junk)
            c.close()

    run(go())


def test_flood_from_one_source(run: Run) -> None:
    limits = Limits(source_packets=100, source_packet_burst=200)

    async def go() -> None:
        async with Reflector([HOST], [0], [], limits=limits) as server:
            port, flooder, other = server.udp_bound[0], await client(), await client("127.0.0.2")
            start = time.perf_counter()
            for seq in range(5000):
                flooder.send(request(seq, size=300), port)
                await asyncio.sleep(0)  # the loop reads as we send: what is measured is the
                if seq % 1000 == 999:  # server's limit, not the kernel's socket buffer
                    # The server answers another source during the flood.
                    reply = await other.ask(request(seq, session=b"o" * 8), port)
                    assert echo.decode(reply, replies=True).message.seq == seq
            elapsed = time.perf_counter() - start
            answered = flooder.replies.qsize()
            stats = server.stats
            # What the bucket allows in the time it took, whatever the machine's speed.
            assert answered <= limits.source_packet_burst + limits.source_packets * elapsed + 1
            assert stats.rate_limited == stats.datagrams - 5 - answered
            print(f"\nflood: 5000 datagrams of 300 B from one source in {elapsed:.2f} s; "
                  f"{stats.datagrams} read, {answered} answered, {stats.rate_limited} "
                  f"rate-limited; another source answered 5 times out of 5 meanwhile")
            flooder.close()
            other.close()

    run(go())


def test_wrong_tokens_are_ignored(run: Run) -> None:
    async def go() -> None:
        async with Reflector([HOST], [0], [], keys=[b"old-token-being-rotated", TOKEN]) as server:
            port, c = server.udp_bound[0], await client()
            for shape in Shape:
                c.send(request(1, shape, key=b"a-guess-at-the-token-xxxxxxxx"), port)
                c.send(request(1, shape), port)  # the public key: a reflector without token
            c.send(stun.encode_message(stun.binding_request()), port)  # plain STUN: no token
            await c.nothing_before(request(7, Shape.STUN, key=TOKEN), port, (TOKEN,))
            assert server.stats.wrong_token == 2 * len(Shape) + 1
            c.close()
        async with Reflector([HOST], [0], [], keys=[TOKEN], open_stun=True) as server:
            c = await client()
            plain = await c.ask(stun.encode_message(stun.binding_request()), server.udp_bound[0])
            assert stun.decode_message(plain).cls == stun.Class.SUCCESS
            c.close()

    run(go())


def rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def test_thousands_of_flows_stay_bounded(run: Run) -> None:
    limits = Limits(source_packets=1e6, source_packet_burst=1e6, source_bytes=1e9,
                    source_byte_burst=1e9, source_volume=1e12, max_flows=1000)

    async def go() -> None:
        async with Reflector([HOST], [0], [], limits=limits) as server:
            assert server.core is not None
            port, c = server.udp_bound[0], await client()
            for batch in range(50):  # 5000 flows, 100 datagrams in flight at a time
                for i in range(100):
                    c.send(request(0, session=(batch * 100 + i).to_bytes(8, "big")), port)
                for _ in range(100):
                    await asyncio.wait_for(c.replies.get(), 5)
            assert len(server.core.flows) == 1000 and server.stats.flows_evicted == 4000
            c.close()

    run(go())
    # The default tables, filled far past their caps through the core itself (no socket),
    # with the process's RSS as the figure (the interpreter reuses what evicted entries free).
    core = UdpCore([echo.PUBLIC_KEY], Sources(Limits(source_packets=1e9, source_packet_burst=1e9,
                                                     source_bytes=1e12, source_byte_burst=1e12,
                                                     source_volume=1e15), 0.0), Stats())
    datagrams = [request(0, size=60, session=i.to_bytes(8, "big")) for i in range(100_000)]
    rss = [rss_kib()]
    start = time.perf_counter()
    for i, data in enumerate(datagrams):
        core.handle(data, (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 4000), 3478, i / 1e4)
        if i in (16_383, 29_999, 99_999):
            rss.append(rss_kib())
    seconds = time.perf_counter() - start
    assert len(core.flows) == core.limits.max_flows == 16384
    assert len(core.sources) == core.limits.max_sources == 4096
    assert rss[3] - rss[2] < 4096  # full and churned: 70 000 more sessions, no growth
    print(f"\nflows: 100 000 sessions from 100 000 sources through the core in {seconds:.2f} s "
          f"({100_000 / seconds:,.0f} datagrams/s); tables capped at 16 384 flows and 4 096 "
          f"sources; RSS growth after 16 384 / 30 000 / 100 000 sessions: "
          f"{rss[1] - rss[0]} / {rss[2] - rss[0]} / {rss[3] - rss[0]} KiB")


# --- TCP -----------------------------------------------------------------------------------


def client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # pinned by fingerprint below, as a catalog would
    return context


class Stream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames = echo.FrameReader()
        self.pending: list[echo.Frame] = []

    async def frame(self) -> echo.Frame:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            if not data:
                raise ConnectionError("closed")
            self.pending += self.frames.feed(data)
        return self.pending.pop(0)

    async def closed(self) -> bool:
        """True once the server has closed the connection (EOF or reset), with no frame."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), 30)
        except (ConnectionError, ssl.SSLError):
            return True
        return not data

    def close(self) -> None:
        self.writer.transport.abort()


async def connect(port: int, sni: str = "web.whatsapp.com", hello: bool = True,
                  key: bytes = echo.PUBLIC_KEY, rcvbuf: int | None = None) -> Stream:
    sock = None
    if rcvbuf is not None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
    reader, writer = await asyncio.open_connection(
        None if sock else HOST, None if sock else port, sock=sock, ssl=client_context(),
        server_hostname=sni)
    stream = Stream(reader, writer)
    if hello:
        writer.write(echo.hello(echo.new_session(), key))
        assert (await stream.frame()).type is FrameType.HELLO_OK
    return stream


def test_tls_any_sni_and_echo(run: Run) -> None:
    async def go() -> None:
        async with Reflector([HOST], [], [0]) as server:
            assert server.certificate is not None
            port = server.tcp_bound[0]
            for sni in ("web.whatsapp.com", "example.org", "x"):
                s = await connect(port, sni)
                der = s.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
                fingerprint = hashlib.sha256(der).hexdigest().upper()
                assert server.certificate.fingerprint().replace(":", "") == fingerprint
                received, sent = 19, 3  # HELLO (3 + 16) in, HELLO_OK (3) out
                for seq, size in enumerate((23, 100, 5000)):
                    s.writer.write(echo.echo_request(seq, size))
                    frame = await s.frame()
                    received += size
                    assert frame.type is FrameType.ECHO_REPLY and 3 + len(frame.payload) == size
                    assert echo.parse_echo_reply(frame.payload) == (
                        seq, Counters(received, seq + 2, sent, seq + 1))
                    sent += size
                s.close()

    run(go())


def test_download_and_upload_counters(run: Run) -> None:
    async def go() -> None:
        async with Reflector([HOST], [], [0]) as server:
            s = await connect(server.tcp_bound[0])
            s.writer.write(echo.download_request(65536, 1000))
            chunks = []
            while (frame := await s.frame()).type is FrameType.DOWNLOAD_DATA:
                chunks.append(len(frame.payload))
            assert chunks == [1000] * 65 + [536]
            status, counters = echo.parse_download_done(frame.payload)
            assert status is DownloadStatus.SENT
            assert counters == Counters(19 + 9, 2, 3 + 65536 + 3 * 66, 1 + 66)
            for _ in range(64):  # an upload in 1 KiB chunks, then the server's count
                s.writer.write(echo.encode_frame(FrameType.DATA, bytes(1024)))
            s.writer.write(echo.report_request())
            frame = await s.frame()
            assert frame.type is FrameType.REPORT_REPLY
            assert echo.parse_counters(frame.payload) == Counters(
                28 + 64 * 1027 + 19, 2 + 64 + 1, counters.sent_bytes + 20, counters.sent_frames + 1)
            s.writer.write(echo.download_request(2 * 1024 * 1024, 16000))  # over max_download
            frame = await s.frame()
            assert frame.type is FrameType.DOWNLOAD_DONE  # refused at once, nothing sent
            assert echo.parse_download_done(frame.payload)[0] is DownloadStatus.REFUSED
            s.writer.write(echo.download_request(1 << 20, 4096))  # the largest allowed
            received = 0
            while (frame := await s.frame()).type is FrameType.DOWNLOAD_DATA:
                received += len(frame.payload)
            assert echo.parse_download_done(frame.payload)[0] is DownloadStatus.SENT
            assert received == 1 << 20
            assert server.stats.downloads == 2 and server.stats.downloads_refused == 1
            s.close()

    run(go())


def test_client_that_never_reads(run: Run) -> None:
    limits = Limits(write_timeout=0.5, max_download=8 << 20, connection_download=64 << 20,
                    source_bytes=1e9, source_byte_burst=1e9, source_volume=1e12)

    async def go() -> None:
        async with Reflector([HOST], [], [0], limits=limits) as server:
            port = server.tcp_bound[0]
            lazy = await connect(port, rcvbuf=4096)
            for _ in range(8):  # 64 MiB asked for, never read: more than any socket buffers
                lazy.writer.write(echo.download_request(8 << 20, 16384))
            busy = await connect(port)  # meanwhile, another client is served
            busy.writer.write(echo.echo_request(1, 50))
            assert (await busy.frame()).type is FrameType.ECHO_REPLY
            while not server.stats.tcp_timeouts:  # dropped once our writes waited
                await asyncio.sleep(0.05)  # write_timeout (the test's own timeout bounds this)
            assert server.tcp is not None and server.tcp.open == 1  # the busy one is left
            while not await lazy.closed():  # what the kernel had buffered, then the end
                pass
            busy.writer.write(echo.echo_request(2, 50))
            assert (await busy.frame()).type is FrameType.ECHO_REPLY
            print(f"\nlazy reader: dropped after {server.stats.tcp_sent_bytes >> 10} KiB "
                  f"were written to it and the others")
            busy.close()

    run(go())


def test_garbage_and_strangers_are_dropped(run: Run) -> None:
    limits = Limits(idle_timeout=0.5, source_connections=3)

    async def go() -> None:
        async with Reflector([HOST], [], [0], keys=[TOKEN], limits=limits) as server:
            port = server.tcp_bound[0]
            # Garbage instead of a ClientHello: the handshake fails, the server goes on.
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(os.urandom(2000))
            assert await Stream(reader, writer).closed()
            # After TLS: a wrong token, no HELLO at all, garbage frames: closed, no answer.
            for first in (echo.hello(b"s" * 8, b"not-the-team-token-at-all"),
                          echo.echo_request(1, 50), b"\x7f\xff\xff" + os.urandom(100)):
                s = await connect(port, hello=False)
                s.writer.write(first)
                assert await s.closed()
            s = await connect(port, key=TOKEN)  # the right token: served
            s.writer.write(b"GET / HTTP/1.1\r\n\r\n")  # then garbage: dropped
            assert await s.closed()
            idle = await connect(port, key=TOKEN)
            assert await idle.closed()  # nothing sent for idle_timeout
            stats = server.stats
            assert (stats.tls_failed, stats.tcp_unauthenticated) == (1, 2)
            assert stats.tcp_protocol_errors == 2 and stats.tcp_timeouts == 1
            # At most source_connections at once from one source.
            open_ones = [await connect(port, key=TOKEN) for _ in range(3)]
            reader, writer = await asyncio.open_connection(HOST, port)
            assert await Stream(reader, writer).closed()
            assert stats.connections_refused == 1
            for one in open_ones:
                one.close()

    run(go())


# --- the process ---------------------------------------------------------------------------


def test_parse_ports() -> None:
    assert parse_ports("3478-3481,1400, 3478") == [3478, 3479, 3480, 3481, 1400]
    assert parse_ports("") == []
    for bad in ("0", "70000", "3481-3478", "abc", "1-1000"):
        with pytest.raises(ValueError):
            parse_ports(bad)


def test_certificate_made_once_and_kept(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = load_certificate(cert, key)
    assert key.stat().st_mode & 0o077 == 0
    again = load_certificate(cert, key)
    assert again.fingerprint() == made.fingerprint() and again.spki_sha256() == made.spki_sha256()
    with pytest.raises(ValueError):
        load_certificate(cert, None)


def test_main_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    short = tmp_path / "token"
    short.write_text("# a comment\nshort\n")
    cases: list[tuple[str, str, str, Path | None]] = [
        ("localhost", "3478", "", None),  # an address, not a name to resolve
        (HOST, "", "", None),  # nothing to listen on
        (HOST, "99999", "", None),
        (HOST, "3478", "", short),  # a token too short to be a secret
        (HOST, "3478", "", tmp_path / "missing"),
    ]
    for listen, udp, tcp, token in cases:
        assert main(listen, udp, tcp, token) == 2
    assert capsys.readouterr().err.count("probe: reflect: ") == len(cases)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind((HOST, 0))
        port = int(udp.getsockname()[1])
    with socket.socket() as tcp:  # the same number must be free for TCP too
        tcp.bind((HOST, port))
    return port


def test_process_stops_on_sigterm_and_logs_no_address(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN.decode() + "\n")
    token_file.chmod(0o600)
    port = free_port()
    code = ("import sys; from pathlib import Path; from probe.reflect import main; "
            f"sys.exit(main({HOST!r}, '{port}', '{port}', Path({str(token_file)!r}), "
            "stats_every=0.1))")
    process = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        lines = [process.stderr.readline() for _ in range(3)]
        assert "token required" in lines[0] and "SPKI" in lines[2]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.5", 0))  # an address and port the log must never show
            udp.settimeout(10)
            client_port = udp.getsockname()[1]
            udp.sendto(request(1, Shape.RTP, 300, key=TOKEN), (HOST, port))
            assert len(udp.recv(2000)) == 300
        time.sleep(0.3)  # let a stats line or two be logged; nothing is asserted on time
        status = Path(f"/proc/{process.pid}/status").read_text()
        peak = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 143
        log = "".join(lines) + process.stderr.read()
    finally:
        process.kill()
        process.wait()
    assert "answered=1" in log and "stopped" in log
    assert "127.0.0.5" not in log and str(client_port) not in log
    print(f"\nprocess: {peak} KiB peak RSS (interpreter, OpenSSL, one UDP and one TCP port)")
