"""Runs the lab's mock servers inside a namespace until stdin closes: `serve.py SPEC_JSON`.

SPEC_JSON: {"ca_file": path or null, "servers": [{"id", "kind", "host", "port", "behaviour",
"name", "options"}]}. Each server is a probe.mock class (see SERVERS) bound to `host`. When every
server is up, one line `{"ready": true, "ports": {id: port}}` goes to stdout (or `{"ready": false,
"error": ...}`). Then each stdin line `{"id": ..., "behaviour": ...}` switches a running server's
behaviour and is answered `{"ok": true}` or `{"ok": false, "error": ...}`. EOF or SIGTERM stops all.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

from probe.mock.world import SERVERS  # kind -> (module, class): one table for all


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class Reflect:
    """`probe reflect` as one of the lab's servers (kind "reflect"): options `udp_ports` and
    `tcp_ports` (TLS)."""

    BEHAVIOURS = ("ok",)

    def __init__(self, host: str, udp_ports: list[int], tcp_ports: list[int]) -> None:
        from probe.reflect.server import Reflector, load_certificate

        self.reflector = Reflector([host], udp_ports, tcp_ports,
                                   certificate=load_certificate(None, None))
        self.behaviour = "ok"

    @property
    def port(self) -> int:
        return self.reflector.udp_bound[0]

    async def start(self) -> None:
        await self.reflector.__aenter__()

    async def stop(self) -> None:
        await self.reflector.__aexit__(None, None, None)


def _make(entry: dict[str, Any], ca: Any) -> Any:
    if entry["kind"] == "reflect":
        options = entry.get("options", {})
        return Reflect(entry["host"], list(options.get("udp_ports", [0])),
                       list(options.get("tcp_ports", [])))
    module_name, class_name = SERVERS[entry["kind"]]
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(entry.get("behaviour", "ok"), host=entry["host"], port=int(entry.get("port", 0)),
               ca=ca, name=entry.get("name", "mock.test"), **entry.get("options", {}))


async def serve(spec: dict[str, Any]) -> int:
    from probe.mock.certs import TestCA

    ca = TestCA("probe lab CA")
    if spec.get("ca_file"):
        ca.write_ca(Path(spec["ca_file"]))
    running: dict[str, Any] = {}
    try:
        for entry in spec["servers"]:
            server = _make(entry, ca)
            await server.start()
            running[entry["id"]] = server
    except Exception as exc:  # noqa: BLE001 - report why: the failure names the server
        _say({"ready": False, "error": f"{entry.get('id')}: {type(exc).__name__}: {exc}"})
        await _stop(running)
        return 1
    _say({"ready": True, "ports": {k: s.port for k, s in running.items()}})

    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def commands() -> None:
        while line := await reader.readline():
            try:
                command = json.loads(line)
                server = running[command["id"]]
                if command["behaviour"] not in server.BEHAVIOURS:
                    raise ValueError(f"no behaviour {command['behaviour']!r}")
                server.behaviour = command["behaviour"]
                _say({"ok": True})
            except (ValueError, KeyError) as exc:
                _say({"ok": False, "error": repr(exc)})
        done.set()

    task = asyncio.create_task(commands())
    await done.wait()
    task.cancel()
    await _stop(running)
    return 0


async def _stop(running: dict[str, Any]) -> None:
    for server in reversed(list(running.values())):
        try:
            await server.stop()
        except Exception as exc:  # noqa: BLE001 - stopping the rest matters more
            sys.stderr.write(f"stopping {type(server).__name__}: {exc!r}\n")


if __name__ == "__main__":
    sys.exit(asyncio.run(serve(json.loads(sys.argv[1]))))
