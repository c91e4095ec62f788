"""The probe's own address never reaches an output: no format, no result file, no history row,
no log line, even when servers echo it back (STUN mapped address, HTTP bodies and headers, a
portal's redirect URL).

Setup: every server listens on 127.0.0.2 and every target names 127.0.0.2 (or a name resolving
there), so the kernel gives the probe 127.0.0.1 as its source address: "127.0.0.1" (in any
spelling) or one of the probe's source ports in an output can only be a leak.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from probe.mock.certs import TestCA
from probe.mock.dns import DnsServer, DohServer
from probe.mock.hostile import Background, HostileServer
from probe.mock.quic import QuicServer
from probe.mock.stun import StunServer
from probe.mock.tcp import TCPServer

SERVER_IP = "127.0.0.2"
CLIENT_IP = "127.0.0.1"
NAME = "site.privacy.test"
# 127.0.0.1 as text, hex, integer, XOR-MAPPED (xor 0x2112a442) and v4-mapped IPv6.
CLIENT_SPELLINGS = (CLIENT_IP, "7f000001", "7f00:1", "2130706433", "5e12a443")


def leaks(text: str, ports: set[int]) -> list[str]:
    """Every spelling of the client's address, and every client port as a whole number."""
    found = [s for s in CLIENT_SPELLINGS if s in text.lower()]
    found += [str(p) for p in sorted(ports) if re.search(rf"(?<![\w.]){p}(?![\w.])", text)]
    return found


def test_leak_detector_finds_planted_addresses() -> None:
    ports = {40123}
    assert leaks('{"x": "your address is 127.0.0.1:40123"}', ports) == [CLIENT_IP, "40123"]
    assert leaks("mapped 5E12A443 ::ffff:7f00:1", ports) == ["7f00:1", "5e12a443"]
    assert leaks('{"ms": 40123.5, "spki": "ab40123cd", "port": 1401234}', ports) == []


@dataclass
class World:
    catalog: Path
    servers: dict[str, Any]

    def client_ports(self) -> set[int]:
        """The probe's source ports, as the servers saw them (minus any server's own port)."""
        seen = {port for s in self.servers.values() for ip, port in getattr(s, "clients", [])
                if ip == CLIENT_IP}
        return seen - {s.port for s in self.servers.values()}

    def client_ips(self) -> set[str]:
        return {ip for s in self.servers.values() for ip, _ in getattr(s, "clients", [])}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("privacy")
    ca = TestCA()
    ca_file = str(ca.write_ca(folder / "ca.pem"))
    records = {NAME: [SERVER_IP]}
    servers = {
        "echo": HostileServer("echo_address", host=SERVER_IP, ca=ca, name=NAME),
        "portal": HostileServer("echo_redirect", host=SERVER_IP, ca=ca, name=NAME),
        "stun": StunServer("reveal", host=SERVER_IP),
        "tcp": TCPServer("ok", host=SERVER_IP),
        "quic": QuicServer("ok", host=SERVER_IP, ca=ca, name=NAME),
        "dns": DnsServer("ok", host=SERVER_IP, records=records),
        "doh": DohServer("ok", host=SERVER_IP, ca=ca, name=SERVER_IP, records=records),
    }
    with Background(*servers.values()):
        s = {k: v.port for k, v in servers.items()}
        targets = [
            f"https://{NAME}:{s['echo']}/",
            f"https://{NAME}:{s['portal']}/",
            f"tls://{NAME}:{s['echo']}",
            f"tcp://{SERVER_IP}:{s['tcp']}",
            f"dns://{NAME}",
            f"quic://{NAME}:{s['quic']}",
            f"stun://{SERVER_IP}:{s['stun']}",
            f"turn://{SERVER_IP}:{s['stun']}?transport=udp",
            f"turn://{SERVER_IP}:{s['stun']}?transport=tcp",
        ]
        document = {
            "version": 1,
            "settings": {"timeout": "2s", "attempts": 2, "ca_file": ca_file,
                         "resolver": f"{SERVER_IP}:{s['dns']}",
                         "doh": f"https://{SERVER_IP}:{s['doh']}/dns-query"},
            "controls": [f"tcp://{SERVER_IP}:{s['tcp']}"],
            "platforms": {"p": {"features": {"f": targets}}},
        }
        catalog = folder / "probes.yaml"
        catalog.write_text(json.dumps(document))
        yield World(catalog, servers)


def probe(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "probe", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, check=False)


def test_the_servers_really_send_the_client_address(world: World) -> None:
    """Without this, the test below could pass against servers that reveal nothing."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    for server in ("echo", "portal"):
        port = world.servers[server].port
        with socket.create_connection((SERVER_IP, port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=NAME) as tls:
            local_port = tls.getsockname()[1]
            tls.sendall(f"GET / HTTP/1.1\r\nhost: {NAME}\r\n\r\n".encode())
            answer = b""
            with contextlib.suppress(ssl.SSLEOFError):  # closed without close_notify
                while chunk := tls.recv(65536):
                    answer += chunk
        assert leaks(answer.decode(), {local_port}) == [CLIENT_IP, str(local_port)]


def test_no_output_holds_the_probe_address(world: World, tmp_path: Path) -> None:
    outputs: dict[str, str] = {}
    for fmt in ("table", "json", "jsonl", "csv", "markdown"):
        done = probe("run", "-c", str(world.catalog), "-f", fmt, cwd=tmp_path)
        assert done.returncode == 0, f"{fmt}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        outputs[f"stdout {fmt}"], outputs[f"stderr {fmt}"] = done.stdout, done.stderr
    db = tmp_path / "history.sqlite"
    for suffix in (".json", ".jsonl"):
        out = tmp_path / f"run{suffix}"
        done = probe("run", "-c", str(world.catalog), "-f", suffix[1:], "-o", str(out),
                     "--db", str(db), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        outputs[f"file {suffix}"], outputs[f"stderr -o {suffix}"] = out.read_text(), done.stderr
    for fmt in ("table", "csv", "jsonl"):
        done = probe("history", "--db", str(db), "-f", fmt, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        outputs[f"history {fmt}"] = done.stdout + done.stderr
    with sqlite3.connect(db) as connection:
        outputs["history database"] = "\n".join(connection.iterdump())
    outputs["history database bytes"] = db.read_bytes().decode("latin-1")

    # The servers saw the probe at 127.0.0.1 and echoed it: the leak was offered.
    assert world.client_ips() == {CLIENT_IP}
    ports = world.client_ports()
    assert len(ports) > 20
    run = json.loads(outputs["stdout json"])
    by_url = {t["url"].split(":")[0]: t for t in run["targets"]}
    assert all(t["status"] == "ok" for t in run["targets"]), [
        (t["url"], t["reason"], t["detail"]) for t in run["targets"]]
    assert by_url["https"]["phases"]["http"]["bytes"] > 0  # the echoed body was read
    found = {where: leaks(text, ports) for where, text in outputs.items()}
    assert not any(found.values()), {k: v for k, v in found.items() if v}
