"""The probe side of `probe reflect`: flows of each shape to a real reflector on loopback, its
counters read back, the run's `reflector` results; and the counters query's arithmetic."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from probe import catalog
from probe.layers.reflect import _main_flow_received
from probe.mock.tls import TLSServer
from probe.observations import ReflectFacts, TlsFacts, TransferFacts
from probe.reflect.limits import Limits
from probe.reflect.server import Reflector, load_certificate
from probe.results import Run, read_run
from probe.runner import Runner
from probe.wire.echo import EchoReply


def test_flows_to_a_reflector_in_every_shape(tmp_path: Path) -> None:
    token = tmp_path / "reflector.token"
    token.write_text("a-token-of-the-research-team\n")

    async def main() -> Run:
        reflector = Reflector(["127.0.0.1"], [0, 0], [], keys=[b"a-token-of-the-research-team"],
                              certificate=load_certificate(None, None))
        async with reflector:
            call, control = reflector.udp_bound
            document = {"version": 1, "settings": {
                "timeout": "1s", "attempts": 1,
                "reflector": {"address": "127.0.0.1", "udp_ports": [call],
                              "control_port": control, "duration": "1s",
                              "shapes": ["stun", "whatsapp", "telegram", "rtp", "random"],
                              "token_file": str(token)}},
                "platforms": {"p": {"features": {"calls": [
                    {"url": f"reflect://127.0.0.1:{call}?shape=rtp",
                     "call": {"duration": "1s"}}]}}}}
            runner = Runner(loaded=catalog.loads(json.dumps(document)))
            await asyncio.wait_for(runner.run(), 30)
            return runner.finish()

    run = asyncio.run(main())
    assert len(run.reflector) == 10  # 5 shapes x (a call port + the control port)
    for flow in run.reflector:
        assert (flow.status, flow.reason) == ("ok", "ok"), flow.detail
        facts = flow.observation.samples[0].get(ReflectFacts)
        assert facts is not None and facts.sent == 50 and facts.answered == 50
        assert facts.reflector_received == 50  # the reflector's own count of the flow
    [target] = run.targets  # a reflect:// target of a platform is judged like any call path
    assert (target.status, target.reason) == ("ok", "ok") and "MOS" in target.detail
    saved = tmp_path / "run.json"
    saved.write_text(run.to_json())
    assert read_run(saved).reflector == run.reflector


def test_a_reflector_that_refuses_our_token_answers_nothing(tmp_path: Path) -> None:
    token = tmp_path / "reflector.token"
    token.write_text("not-the-team-token-at-all\n")

    async def main() -> Run:
        reflector = Reflector(["127.0.0.1"], [0], [], keys=[b"a-token-of-the-research-team"],
                              certificate=load_certificate(None, None))
        async with reflector:
            [port] = reflector.udp_bound
            document = {"version": 1, "settings": {"timeout": "1s", "attempts": 1},
                        "platforms": {"p": {"features": {"f": [
                            {"url": f"reflect://127.0.0.1:{port}?shape=random",
                             "call": {"duration": "0.5s"}}]}}}}
            runner = Runner(loaded=catalog.loads(json.dumps(document)))
            await asyncio.wait_for(runner.run(), 30)
            return runner.finish()

    [target] = asyncio.run(main()).targets
    assert target.reason == "udp.timeout"


def reply(seq: int, received: int) -> EchoReply:
    return EchoReply(b"s" * 8, seq, received, received * 100, 0, 0)


def test_how_many_of_the_flow_reached_the_reflector() -> None:
    # the flow sent 100; the query's requests are numbered from 100
    assert _main_flow_received([reply(100, 101), reply(101, 102)], 100) == 100
    assert _main_flow_received([reply(101, 15)], 100) == 13  # only the second reply came back
    assert _main_flow_received([reply(100, 14), reply(102, 16)], 100) == 13
    assert _main_flow_received([], 100) is None


def _name_run(tmp_path: Path, test_ca: Any, ca_file: str, pin: str | None) -> Run:
    """A platform whose name is reset at its own server (an SNI filter by address) and the
    same name sent to the reflector's TLS port, its key pinned as `pin` (None: the real one)."""

    async def main() -> Run:
        certificate = load_certificate(None, None)
        reflector = Reflector(["127.0.0.1"], [0, 0], [0], certificate=certificate)
        server = TLSServer("ok", ca=test_ca, name="blocked.test",
                           sni_behaviours={"blocked.test": "reset_after_hello"})
        async with reflector:
            await server.start()
            try:
                call, control = reflector.udp_bound
                document = {"version": 1, "settings": {
                    "timeout": "1s", "attempts": 1, "control_sni": "control.test",
                    "reflector": {"address": "127.0.0.1", "udp_ports": [call],
                                  "control_port": control, "duration": "0.3s",
                                  "shapes": ["random"], "tls_port": reflector.tcp_bound[0],
                                  "fingerprint": pin or certificate.spki_sha256()}},
                    "platforms": {"p": {"features": {"messaging": [
                        {"url": f"tls://blocked.test:{server.port}", "address": "127.0.0.1",
                         "ca_file": ca_file}]}}}}
                runner = Runner(loaded=catalog.loads(json.dumps(document)))
                await asyncio.wait_for(runner.run(), 30)
            finally:
                await server.stop()
            return runner.finish()

    return asyncio.run(main())


def test_the_platforms_name_sent_to_the_reflector(tmp_path: Path, test_ca: Any,
                                                  ca_file: str) -> None:
    run = _name_run(tmp_path, test_ca, ca_file, None)
    [handshake] = [t for t in run.reflector if "transport=tls" in t.url]
    assert handshake.name == "reflector tls blocked.test"
    assert (handshake.status, handshake.reason) == ("ok", "ok"), handshake.detail
    tls = handshake.observation.samples[0].get(TlsFacts)
    assert tls is not None and tls.sni == "blocked.test"
    moved = handshake.observation.samples[0].get(TransferFacts)
    assert moved is not None and moved.ok and moved.chunks == [1024, 16384]
    assert moved.down == moved.up == 2 * 64 * 1024
    [target] = run.targets
    assert target.status == "blocked"
    # only the platform's server resets the name: the name passes on another address
    assert "a handshake and 128 KiB each way naming blocked.test passes there" in target.detail


def test_a_reflector_whose_key_is_not_the_pinned_one(tmp_path: Path, test_ca: Any,
                                                     ca_file: str) -> None:
    run = _name_run(tmp_path, test_ca, ca_file, "ab" * 32)
    [handshake] = [t for t in run.reflector if "transport=tls" in t.url]
    assert handshake.reason == "tls.untrusted"
    assert "not the reflector's pinned one" in handshake.detail
    [target] = run.targets  # an unknown answer on the reflector explains nothing
    assert "passes there" not in target.detail


def test_a_download_the_reflector_refuses_is_its_limit_not_the_network(tmp_path: Path) -> None:
    async def main() -> Run:
        certificate = load_certificate(None, None)
        tight = Limits(connection_download=1024)  # less than one download: refused at once
        reflector = Reflector(["127.0.0.1"], [0, 0], [0], certificate=certificate, limits=tight)
        async with reflector:
            call, control = reflector.udp_bound
            document = {"version": 1, "settings": {
                "timeout": "1s", "attempts": 1,
                "reflector": {"address": "127.0.0.1", "udp_ports": [call],
                              "control_port": control, "duration": "0.3s", "shapes": ["random"],
                              "tls_port": reflector.tcp_bound[0]}},
                "platforms": {"p": {"features": {"web": [
                    {"url": "tls://chat.example:9", "address": "127.0.0.1"}]}}}}
            runner = Runner(loaded=catalog.loads(json.dumps(document)))
            await asyncio.wait_for(runner.run(), 30)
            return runner.finish()

    [handshake] = [t for t in asyncio.run(main()).reflector if "transport=tls" in t.url]
    moved = handshake.observation.samples[0].get(TransferFacts)
    assert moved is not None and moved.refused and moved.ok, handshake.detail
    assert handshake.status == "ok"
