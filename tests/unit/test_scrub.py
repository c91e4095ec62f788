"""The scrubber of server text (probe/scrub.py): every spelling of an address, the run's own
ports and names, nothing else."""

from __future__ import annotations

import pytest

from probe.scrub import MASK, PORT_MASK, Scrubber, scrub


@pytest.mark.parametrize(("text", "kept"), [
    ("you are 203.0.113.7", f"you are {MASK}"),
    ("from 203.0.113.7:59103 ok", f"from {MASK} ok"),
    ("host 203-0-113-7.portal.test", f"host {MASK}.portal.test"),
    ("mapped ::ffff:203.0.113.7", f"mapped {MASK}"),
    ("v6 [2001:db8::7]:443 here", f"v6 {MASK} here"),
    ("zone fe80::1%eth0", f"zone {MASK}"),
    ("version 1.2.3 and 10:30", "version 1.2.3 and 10:30"),  # no address in either
])
def test_addresses_in_any_spelling(text: str, kept: str) -> None:
    assert scrub(text) == kept


def test_the_runs_own_ports_and_names_and_nothing_else() -> None:
    s = Scrubber()
    s.know(59103, "5000", "my-host.lan", 7, None)
    assert s("(port 59103)") == f"(port {PORT_MASK})"
    assert s("sent 5000 bytes, 50000 more, 59103x, v59103, 1.59103") == (
        f"sent {PORT_MASK} bytes, 50000 more, 59103x, v59103, 1.59103")
    assert s("hello my-host.lan!") == f"hello {PORT_MASK}!"
    assert s("7 of 7") == "7 of 7"  # one digit: never a port we hide
    for port in range(40000, 41000):  # many sockets: each known, none slows the next
        s.know(port)
    assert s("from 40999 and 39999") == f"from {PORT_MASK} and 39999"


def test_controls_dropped_and_cut_only_after_masking() -> None:
    text = "a\x00b\x1b[31m " + "x" * 190 + " 203.0.113.7"
    out = Scrubber()(text, limit=200)
    assert out is not None and "\x00" not in out and "\x1b" not in out
    assert "203.0" not in out and len(out) <= 200
