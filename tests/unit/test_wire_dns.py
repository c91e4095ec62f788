"""The DNS codec and address predicates (probe/wire/dns.py), as tables: no network."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st

from probe.mock.dns import build_reply
from probe.wire.dns import (
    is_bogon,
    is_public_name,
    parse_reply,
    shares_address,
    system_nameservers,
)

NAME = "web.whatsapp.com"


@pytest.mark.parametrize(("address", "bogon"), [
    ("10.10.34.34", True), ("192.168.1.1", True), ("172.16.0.1", True), ("127.0.0.66", True),
    ("169.254.1.1", True), ("100.64.0.1", True), ("0.0.0.0", True), ("224.0.0.1", True),
    ("192.0.2.1", True), ("240.0.0.1", True), ("::1", True), ("fe80::1", True),
    ("fc00::1", True), ("::ffff:10.0.0.1", True), ("not an address", True),
    ("157.240.1.1", False), ("8.8.8.8", False), ("2a03:2880::1", False),
    ("::ffff:8.8.8.8", False),
])
def test_is_bogon(address: str, bogon: bool) -> None:
    assert is_bogon(address) is bogon


@pytest.mark.parametrize(("name", "public"), [
    ("web.whatsapp.com", True), ("WEB.WHATSAPP.COM.", True), ("localhost", False),
    ("printer.lan", False), ("svc.internal", False), ("a.test", False), ("router", False),
    ("nas.home.arpa", False), ("latest.com", True),
])
def test_is_public_name(name: str, public: bool) -> None:
    assert is_public_name(name) is public


def test_shares_address_compares_the_used_family() -> None:
    assert shares_address(["1.1.1.1", "::1"], ["1.1.1.1"])
    assert not shares_address(["10.0.0.1", "2a03::1"], ["1.1.1.1", "2a03::1"])
    assert shares_address(["2a03::1"], ["1.1.1.1", "2a03::1"])
    assert not shares_address(["2a03::2"], ["1.1.1.1"])  # other family only: compared as is
    assert not shares_address([], ["1.1.1.1"])


# --- messages ---------------------------------------------------------------------------------


def test_system_nameservers_from_resolv_conf_text() -> None:
    text = ("# a comment\nsearch lan\nnameserver 192.168.1.1\nnameserver  fe80::1%eth0 # x\n"
            "nameserver not-an-address\noptions edns0\n;nameserver 9.9.9.9\nnameserver 1.1.1.1")
    assert system_nameservers(text) == ["192.168.1.1", "fe80::1%eth0", "1.1.1.1"]
    assert system_nameservers("") == []


def test_parse_reply_reads_answers_and_rejects_others() -> None:
    query = dns.message.make_query(NAME, "A")
    reply = build_reply(query, {NAME: ["157.240.1.1", "157.240.1.2", "::1"]})
    got = parse_reply(reply.to_wire(), query)
    assert got is not None and (got.rcode, got.ttl, got.truncated) == ("NOERROR", 60, False)
    assert sorted(got.addresses) == ["157.240.1.1", "157.240.1.2"]  # in wire order, shuffled
    other = dns.message.make_query(NAME, "A")
    assert parse_reply(build_reply(other, {}).to_wire(), query) is None  # another id
    assert parse_reply(b"", query) is None
    assert parse_reply(b"\x00" * 3, query) is None
    assert parse_reply(reply.to_wire()[:-3], query) is None  # truncated in the middle


def test_parse_reply_rcodes_and_truncation() -> None:
    query = dns.message.make_query(NAME, "A")
    nx = parse_reply(build_reply(query, {}).to_wire(), query)
    assert nx is not None and nx.rcode == "NXDOMAIN" and nx.failure == "nxdomain"
    refused = build_reply(query, {}, dns.rcode.REFUSED)
    refused.question = []  # refusals may come without a question section
    got = parse_reply(refused.to_wire(), query)
    assert got is not None and got.failure == "refused"
    empty = build_reply(query, {NAME: ["::1"]})  # AAAA only: no A record
    got = parse_reply(empty.to_wire(), query)
    assert got is not None and got.failure == "no_answer"
    empty.flags |= dns.flags.TC
    got = parse_reply(empty.to_wire(), query)
    assert got is not None and got.truncated
    formerr = parse_reply(build_reply(query, {}, dns.rcode.FORMERR).to_wire(), query)
    assert formerr is not None and formerr.failure == "servfail" and formerr.rcode == "FORMERR"


@given(st.binary(max_size=600))
def test_parse_reply_never_raises_on_hostile_bytes(wire: bytes) -> None:
    query = dns.message.make_query(NAME, "A")
    # Give half the inputs the query's id, so the parser gets past the id check.
    for candidate in (wire, query.id.to_bytes(2, "big") + b"\x81\x80" + wire[4:]):
        reply = parse_reply(candidate, query)
        assert reply is None or isinstance(reply.addresses, list)


def test_parse_reply_ignores_address_records_of_another_class() -> None:
    """Found by fuzzing: an A record of an unknown class parses as generic rdata with no address."""
    query = dns.message.make_query(NAME, "A")
    reply = build_reply(query, {NAME: ["157.240.1.1"]})
    wire = bytearray(reply.to_wire())
    # The answer ends type(2) class(2) ttl(4) rdlength(2) address(4): its class is at -12.
    wire[-12:-10] = (0x1234).to_bytes(2, "big")  # a class nobody defined
    got = parse_reply(bytes(wire), query)
    assert got is not None and got.addresses == ()
