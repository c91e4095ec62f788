"""`probe demo`: a mock world on loopback, measured honest first, then censored.

Four fictional platforms with messaging, media, calls and web features run on 127.0.0.1. The
first run records a baseline with every behaviour "ok"; then the servers switch to what censors
do (an SNI-keyed reset, silent UDP, a throttled download, a stalled one, a lying resolver, a
block page) and the second run is judged against the baseline. No internet, no root.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from probe.loop import new_loop
from probe.mock.world import Endpoint, Scenario, World
from probe.session import Output

PLATFORMS = {"chatter": "Chatter", "telegrab": "Telegrab", "signum": "Signum", "voxa": "Voxa"}


def _e(kind: str, name: str, platform: str | None, feature: str | None, **kw: object) -> Endpoint:
    return Endpoint(kind=kind, name=name, platform=platform, feature=feature, **kw)  # type: ignore[arg-type]


# The demo's calls: call-like flows of 2 s (enough to cross a 25-packet freeze) keep it short.
CALL = {"call": {"duration": "2s"}}

# (endpoint, behaviour once censored); None keeps it honest. "sni:B" gives behaviour B to
# ClientHellos naming the endpoint only, so another SNI to the same server still works.
WORLD: list[tuple[Endpoint, str | None]] = [
    (_e("dns", "resolver.demo.test", None, None), None),
    (_e("doh", "doh.demo.test", None, None), None),
    (_e("https", "control.demo.test", None, None, control=True), None),
    # Chatter: text works, calls connect and then freeze (after 25 packets), media is throttled.
    (_e("tcp", "chat.chatter.test", "chatter", "messaging"), None),
    (_e("https", "media.chatter.test", "chatter", "media", path="/1mib",
        options={"rate": 256_000}), "throttle"),
    (_e("stun", "stun.chatter.test", "chatter", "calls", target=CALL), "freeze"),
    (_e("https", "web.chatter.test", "chatter", "web"), None),
    # Telegrab: its name is reset by SNI; its media freezes after 16 KB; calls gurgle (15 %
    # loss each way, up to 80 ms of jitter).
    (_e("tls", "dc.telegrab.test", "telegrab", "messaging"), "sni:reset_after_hello"),
    (_e("https", "cdn.telegrab.test", "telegrab", "media", path="/1mib"), "stall"),
    (_e("stun", "relay.telegrab.test", "telegrab", "calls", options={"seed": 7},
        target=CALL), "gurgle"),
    # Signum: the resolver lies about its web name; the rest works.
    (_e("https", "www.signum.test", "signum", "web"), None),
    (_e("turn", "turn.signum.test", "signum", "calls", target=CALL), None),
    (_e("quic", "chat.signum.test", "signum", "messaging"), None),
    # Voxa: a block page on the web, QUIC cut while TLS works.
    (_e("https", "www.voxa.test", "voxa", "web"), "forbidden"),
    (_e("tls", "app.voxa.test", "voxa", "messaging"), None),
    (_e("quic", "app.voxa.test", "voxa", "calls"), "silent"),
    # ...and a server that is down in the baseline too: down, not blocked (inconclusive).
    (_e("tcp", "media.voxa.test", "voxa", "media", behaviour="refuse"), None),
]
LYING_RESOLVER = {"www.signum.test": ["127.0.0.66"]}  # nothing listens there


def scenario() -> Scenario:
    return Scenario(
        settings={"timeout": "1s", "attempts": 2, "concurrency": 64},
        names=PLATFORMS,
        endpoints=[endpoint for endpoint, _ in WORLD],
    )


def censor(world: World) -> None:
    """Switch the world's servers to what a censor would make of them."""
    for index, (endpoint, behaviour) in enumerate(WORLD):
        if behaviour is None:
            continue
        if behaviour.startswith("sni:"):
            world.servers[index].sni_behaviours[endpoint.name] = behaviour[4:]
        else:
            world.set_behaviour(index, behaviour)
    resolver = world.servers[0]
    resolver.records.update(LYING_RESOLVER)


async def _start(world: World) -> None:
    await world.start()


# The baseline as the censored run's report names it when nothing is kept (no path to point at).
UNKEPT_BASELINE = "the honest run just before, not kept (--keep DIR keeps both runs)"


def main(fmt: str = "table", keep: Path | None = None, details: bool = False) -> int:
    """Run the demo; returns its exit code: 0 when it ran (it shows censorship by design),
    130 or 143 when SIGINT or SIGTERM stopped it (what was measured is still reported).

    Progress goes to stderr, live while a run goes when stderr is a terminal. Without `keep`
    everything lives in a temporary folder removed on exit, so no path to it is printed."""
    from probe import catalog
    from probe.errors import EXIT_SIGNAL
    from probe.report import render_for_terminal
    from probe.session import run_once

    say = sys.stderr.write
    t0 = time.perf_counter()
    world = World(scenario(), folder=keep)
    loop = new_loop()
    try:
        import threading

        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(_start(world))
            ready.set()
            loop.run_forever()

        say(f"probe demo: starting {len(WORLD)} mock servers on 127.0.0.1…\n")
        thread = threading.Thread(target=serve, name="probe-demo-world", daemon=True)
        thread.start()
        if not ready.wait(30):
            raise RuntimeError("the mock world did not start")
        path = world.folder / "demo-catalog.yaml"
        path.write_text(world.catalog_yaml(), encoding="utf-8")
        loaded = catalog.load(path)
        targets = len(list(loaded.jobs()))

        def output(name: str) -> Output | None:
            return Output(world.folder / name, "json") if keep else None

        say(f"probe demo: 1/2 every server honest: recording a baseline of {targets} "
            f"targets…\n")
        first = run_once(loaded, output=output("baseline.json"))
        if first.signum:
            say("probe demo: interrupted while recording the baseline\n")
            return EXIT_SIGNAL.get(first.signum, 130)
        baseline = first.run

        async def switch() -> None:
            censor(world)

        asyncio.run_coroutine_threadsafe(switch(), loop).result(10)
        say("probe demo: 2/2 the same world, censored (SNI reset, silent UDP, throttling, "
            "a stall, a lying resolver, a block page, QUIC dropped)…\n")
        second = run_once(loaded, baseline=baseline,
                          baseline_path=str(world.folder / "baseline.json") if keep
                          else UNKEPT_BASELINE, output=output("censored.json"))
        kept = (f"catalog, baseline and censored runs kept in {world.folder}" if keep
                else "pass --keep DIR to keep the catalog and both runs")
        say(f"probe demo: done in {time.perf_counter() - t0:.1f} s; {kept}\n\n")
        sys.stdout.write(render_for_terminal(second.run, fmt, baseline, details=details))
        sys.stdout.flush()
        if second.signum:
            return EXIT_SIGNAL.get(second.signum, 130)
        # The demo worked when it showed the censorship; its exit code says the demo ran.
        return 0
    except KeyboardInterrupt:  # Ctrl-C while the world starts, outside a run's own handler
        say("probe demo: interrupted\n")
        return EXIT_SIGNAL[2]
    finally:
        async def shutdown() -> None:
            await world.stop()

        if loop.is_running():
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        world.close()
