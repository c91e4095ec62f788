"""Fixtures of the network-namespace censorship lab: one topology per module, always torn down.

Without root or off Linux the lab skips with the reason; under CI=true it never skips, it fails,
so a CI that lost its privileges or tools cannot pass by testing nothing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from netns import LabError, Topology, missing_tools
from scenario import Lab, MakeLab


def _lab_unavailable() -> str | None:
    if sys.platform != "linux":
        return "the censorship lab needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the censorship lab needs root (network namespaces, nftables, tc)"
    missing = missing_tools()
    if missing:
        return f"the censorship lab needs these Debian packages: {' '.join(missing)}"
    return None


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}: the lab must run in CI", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    reason = _lab_unavailable()
    if reason:
        _unavailable(reason)
    try:
        made = Topology.create()
    except LabError as exc:  # e.g. root in a container without CAP_SYS_ADMIN
        _unavailable(f"cannot build network namespaces: {exc}")
        raise
    try:
        yield made
    finally:
        made.destroy()



@pytest.fixture(scope="module")
def make_lab(topology: Topology, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeLab]:
    """Build the module's Lab: servers, catalog, baseline. Servers are stopped at teardown."""
    labs: list[Lab] = []

    def make(servers: Sequence[dict[str, Any]],
             targets: Callable[[dict[str, int]], Sequence[dict[str, Any]]], *,
             records: dict[str, list[str]] | None = None,
             resolver: dict[str, Any] | None = None, **settings: Any) -> Lab:
        lab = Lab(topology, tmp_path_factory.mktemp("lab"))
        labs.append(lab)
        lab.serve(servers, records, resolver)
        lab.write_catalog(targets(lab.ports), **settings)
        lab.record_baseline()
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            lab.close()
