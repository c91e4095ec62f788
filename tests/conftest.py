"""Shared fixtures: a test CA and its CA file, running coroutines, catalogs of loopback targets."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from probe import catalog
from probe.catalog import Job, LoadedCatalog
from probe.mock.certs import TestCA

T = TypeVar("T")


@pytest.fixture(scope="session")
def test_ca() -> TestCA:
    """One CA for the whole session; mock TLS servers get their leaves from it."""
    return TestCA()


@pytest.fixture(scope="session")
def ca_file(test_ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The session CA as a PEM file, for `ca_file:` in catalogs."""
    return str(test_ca.write_ca(tmp_path_factory.mktemp("ca") / "ca.pem"))


@pytest.fixture
def run() -> Callable[..., Any]:
    """`run(coro, timeout=60)`: run a coroutine on a fresh event loop, bounded in time."""

    def runner(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(timeout):
                return await coro

        return asyncio.run(bounded())

    return runner


def loopback_catalog(
    *targets: str | dict[str, Any], platform: str = "test", feature: str = "f",
    **settings: Any,
) -> LoadedCatalog:
    """A catalog of one feature holding `targets` (URLs or target mappings), with `settings`.

    Targets should use IP literals or `address: 127.0.0.1`: the host's resolver is never used.
    """
    document = {"version": 1, "settings": settings,
                "platforms": {platform: {"features": {feature: list(targets)}}}}
    return catalog.loads(json.dumps(document))  # JSON is YAML


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback port nobody accepts on: a connection the probe makes waits in its queue,
    where the test sees it (`accept`), and a TLS handshake to it waits out its timeout."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=64)
    sock.setblocking(False)
    yield sock
    sock.close()


@pytest.fixture
def make_catalog() -> Callable[..., LoadedCatalog]:
    """`make_catalog(*targets, **settings)`: see `loopback_catalog`."""
    return loopback_catalog


@pytest.fixture
def make_job() -> Callable[..., Job]:
    """`make_job(target, **settings)`: the Job for one target, as the engine would run it."""

    def job(target: str | dict[str, Any], **settings: Any) -> Job:
        return next(loopback_catalog(target, **settings).jobs())

    return job


@pytest.fixture(autouse=True)
def no_host_resolver(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A test that forgets `resolver:` must not reach the host's resolver: `system` here means
    a loopback address where nothing answers, so such a test fails with dns.timeout instead."""
    folder = tmp_path_factory.mktemp("resolv")
    fake = folder / "resolv.conf"
    fake.write_text("nameserver 127.255.255.254\n")
    monkeypatch.setattr("probe.layers.dns.RESOLV_CONF", str(fake))
