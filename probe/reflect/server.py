"""`probe reflect` as a process: its sockets, tokens, certificate, logs, and `main`."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import hashlib
import ipaddress
import logging
import os
import signal
import socket
import ssl
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from probe import loop
from probe.reflect.limits import Limits, Sources, Stats
from probe.reflect.tcp import TcpSide
from probe.reflect.udp import UdpCore, UdpPort
from probe.wire import echo

log = logging.getLogger("probe.reflect")

MAX_PORTS = 256  # per protocol: each port is a socket, and a range is easy to mistype
UDP_RECEIVE_BUFFER = 1 << 20
MIN_TOKEN = 16  # characters: a token is a shared secret, not a password to remember


def parse_ports(text: str) -> list[int]:
    """'3478-3481,1400' -> [3478, 3479, 3480, 3481, 1400] (in order, without repeats)."""
    ports: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, dash, high = part.partition("-")
        try:
            first, last = int(low), int(high) if dash else int(low)
        except ValueError:
            raise ValueError(f"bad port {part!r} (use e.g. 3478-3481,1400)") from None
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"bad port range {part!r}: ports are 1-65535, low to high")
        for port in range(first, last + 1):
            if port not in ports:
                ports.append(port)
        if len(ports) > MAX_PORTS:
            raise ValueError(f"more than {MAX_PORTS} ports in {text!r}")
    return ports


def parse_listen(text: str) -> list[str]:
    """'0.0.0.0,::' -> the addresses to bind, each checked to be an IP address."""
    addresses = [part.strip() for part in text.split(",") if part.strip()]
    if not addresses:
        raise ValueError("--listen needs an address, e.g. 0.0.0.0 or 0.0.0.0,::")
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"--listen {address!r} is not an IP address") from None
    return addresses


def load_tokens(path: Path) -> list[bytes]:
    """The secrets in a token file: one per line (several while rotating), '#' comments."""
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--token-file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    tokens = [line.strip() for line in text.splitlines()]
    tokens = [t for t in tokens if t and not t.startswith("#")]
    if not tokens:
        raise ValueError(f"--token-file {path}: no token in it")
    for token in tokens:
        if len(token) < MIN_TOKEN:
            raise ValueError(f"--token-file {path}: a token shorter than {MIN_TOKEN} characters "
                             "(make one with: openssl rand -hex 32)")
    if mode & 0o077:
        log.warning("reflect: %s is readable by other users; chmod 600 it", path)
    return [t.encode("utf-8") for t in tokens]


# --- the certificate -----------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    cert_pem: bytes
    key_pem: bytes

    @property
    def der(self) -> bytes:
        return ssl.PEM_cert_to_DER_cert(self.cert_pem.decode("ascii"))

    def fingerprint(self) -> str:
        """SHA-256 of the certificate, as `openssl x509 -noout -fingerprint -sha256` shows it."""
        return ":".join(f"{b:02X}" for b in hashlib.sha256(self.der).digest())

    def spki_sha256(self) -> str:
        """SHA-256 of the public key (hex): the `spki_sha256` the probe's tls layer records."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        key = x509.load_der_x509_certificate(self.der).public_key()
        spki = key.public_bytes(serialization.Encoding.DER,
                                serialization.PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(spki).hexdigest()

    def context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        with tempfile.TemporaryDirectory() as folder:  # ssl loads chains from files only
            cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
            cert.write_bytes(self.cert_pem)
            key.touch(0o600)
            key.write_bytes(self.key_pem)
            context.load_cert_chain(cert, key)
        return context


def make_certificate(days: int = 3650) -> Certificate:
    """A self-signed P-256 certificate; clients pin it, so its name and dates matter little."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "probe reflect")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return Certificate(cert.public_bytes(serialization.Encoding.PEM), key_pem)


def load_certificate(cert: Path | None, key: Path | None) -> Certificate:
    """Neither: a new certificate for this run. Both, existing: those. Both, neither existing:
    a new one written there (key mode 600) and reused on every later start, so the fingerprint
    that catalogs pin survives restarts."""
    if cert is None and key is None:
        return make_certificate()
    if cert is None or key is None:
        raise ValueError("--cert and --key go together")
    if not cert.exists() and not key.exists():
        made = make_certificate()
        try:
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(made.key_pem)
            cert.write_bytes(made.cert_pem)
        except OSError as exc:
            raise ValueError(f"cannot write the new certificate: {exc}") from None
        log.info("reflect: made a self-signed certificate in %s and %s", cert, key)
        return made
    try:
        loaded = Certificate(cert.read_bytes(), key.read_bytes())
        loaded.context()  # fails here, with the path named, rather than at the first client
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ValueError(f"--cert {cert} / --key {key}: {exc}") from None
    return loaded


# --- the server ----------------------------------------------------------------------------


def _bind_udp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:  # so that 0.0.0.0 and :: can share a port number
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        # Room for a burst (or one source's flood) without the kernel dropping everyone's
        # datagrams; the kernel caps it at net.core.rmem_max.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"UDP {host} port {port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


class Reflector:
    """The UDP and TCP sockets of one reflector, all fed to one core (one set of limits).

    Port 0 binds a free port (tests); `udp_bound` / `tcp_bound` tell which, after start()."""

    def __init__(self, hosts: Sequence[str], udp_ports: Sequence[int],
                 tcp_ports: Sequence[int], *, keys: Sequence[bytes] | None = None,
                 certificate: Certificate | None = None, limits: Limits | None = None,
                 open_stun: bool = False, clock: Callable[[], float] | None = None) -> None:
        self.hosts = list(hosts)
        self.udp_ports, self.tcp_ports = list(udp_ports), list(tcp_ports)
        self.limits = limits or Limits()
        self.stats = Stats()
        self.token = keys is not None
        self.keys = tuple(keys) if keys is not None else (echo.PUBLIC_KEY,)
        self._clock = clock
        self.sources: Sources | None = None
        self.core: UdpCore | None = None
        self.tcp: TcpSide | None = None
        self.certificate = certificate if certificate is not None or not tcp_ports \
            else make_certificate()
        self.open_stun = open_stun or not self.token
        self.udp_bound: list[int] = []
        self.tcp_bound: list[int] = []
        self._udp: list[asyncio.DatagramTransport] = []
        self._servers: list[asyncio.Server] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        clock = self._clock or loop.time
        self.sources = Sources(self.limits, clock())
        self.core = UdpCore(self.keys, self.sources, self.stats,
                            answer_plain_stun=self.open_stun)
        try:
            for host in self.hosts:
                for port in self.udp_ports:
                    sock = _bind_udp(host, port)
                    transport, protocol = await loop.create_datagram_endpoint(
                        lambda: UdpPort(self.core, clock), sock=sock)  # type: ignore[arg-type]
                    self._udp.append(transport)
                    self.udp_bound.append(protocol.port)
            if self.tcp_ports:
                assert self.certificate is not None
                self.tcp = TcpSide(self.keys, self.sources, self.stats,
                                   self.certificate.context(), clock)
                for host in self.hosts:
                    for port in self.tcp_ports:
                        server = await asyncio.start_server(self.tcp.connection, host, port,
                                                            backlog=128)
                        self._servers.append(server)
                        self.tcp_bound.append(int(server.sockets[0].getsockname()[1]))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for transport in self._udp:
            transport.close()
        self._udp.clear()
        for server in self._servers:
            server.close()
        if self.tcp is not None:
            await self.tcp.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def expire(self) -> None:
        """Forget every idle flow now (they are otherwise forgotten as new ones come)."""
        if self.core is not None:
            self.core.flows.expire(self._now(), budget=self.limits.max_flows)

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    def counts(self) -> str:
        """The log line: counts only, never an address, a port of a client or a session."""
        flows = len(self.core.flows) if self.core is not None else 0
        sources = len(self.sources) if self.sources is not None else 0
        return self.stats.line(flows=flows, sources=sources,
                               connections_open=self.tcp.open if self.tcp else 0)


def _quiet(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # asyncio's default handler prints the context, which may name a transport's peer.
    exc = context.get("exception")
    log.debug("reflect: asyncio: %s", type(exc).__name__ if exc else context.get("message"))


async def serve(reflector: Reflector, stats_every: float,
                on_ready: Callable[[Reflector], None] | None = None) -> int | None:
    """Run until SIGINT/SIGTERM; the signal number that stopped it."""
    # Not probe.schedule.Stopper: importing it loads the whole runner, which a reflector on a
    # VPS has no use for (and which must not be able to break it).
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet)
    stopped = asyncio.Event()
    signals: list[int] = []

    def stop(signum: int) -> None:
        signals.append(signum)
        stopped.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop, signum)
    try:
        async with reflector:
            if on_ready is not None:
                on_ready(reflector)
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopped.wait(), stats_every)
                if stopped.is_set():
                    break
                reflector.expire()
                log.info("reflect: %s", reflector.counts())
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)
    return signals[0] if signals else None


def main(listen: str, udp_ports: str, tcp_ports: str, token_file: Path | None, *,
         cert: Path | None = None, key: Path | None = None, open_stun: bool = False,
         stats_every: float = 300.0, limits: Limits | None = None) -> int:
    """`probe reflect`: serve until SIGINT/SIGTERM. 0 unless stopped by a signal (then 128 +
    the signal, as `probe serve`), 2 for a usage error (the message already printed)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                            stream=sys.stderr)
    try:
        hosts = parse_listen(listen)
        udp, tcp = parse_ports(udp_ports), parse_ports(tcp_ports)
        if not udp and not tcp:
            raise ValueError("nothing to listen on: give --udp-ports and/or --tcp-ports")
        keys = load_tokens(token_file) if token_file is not None else None
        certificate = load_certificate(cert, key) if tcp else None
    except ValueError as exc:
        sys.stderr.write(f"probe: reflect: {exc}\n")
        return 2
    reflector = Reflector(hosts, udp, tcp, keys=keys, certificate=certificate,
                          limits=limits, open_stun=open_stun)

    def ready(r: Reflector) -> None:
        where = ",".join(f"[{h}]" if ":" in h else h for h in hosts)
        sys.stderr.write(f"probe: reflecting on {where} UDP {udp_ports or '-'} TCP "
                         f"{tcp_ports or '-'}; {'token required' if keys else 'open to all'};"
                         " Ctrl-C stops\n")
        if r.certificate is not None:
            sys.stderr.write(f"probe: TLS certificate SHA-256 {r.certificate.fingerprint()}\n"
                             f"probe: TLS public key (SPKI) SHA-256 "
                             f"{r.certificate.spki_sha256()} (the fingerprint catalogs pin)\n")

    try:
        signum = loop.run(serve(reflector, stats_every, ready))
    except OSError as exc:
        hint = " (ports below 1024: see 'Running a reflector' in the README)" \
            if exc.errno == errno.EACCES else ""
        sys.stderr.write(f"probe: reflect: cannot listen: {exc.strerror or exc}{hint}\n")
        return 2
    with contextlib.suppress(Exception):
        log.info("reflect: stopped; %s", reflector.counts())
    return 128 + signum if signum else 0
