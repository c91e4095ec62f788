"""DNS messages and address predicates, sans-I/O: queries out, replies in, no sockets, no clock.

dnspython builds and parses the wire format; this module decides what a reply says for the
probe (its rcode, the addresses it gives after following CNAMEs, its lowest TTL, whether it was
truncated) and which bytes are no reply to our question at all (garbage, someone else's reply: a
hostile peer's bytes are never an error here, only `None`). The address predicates are facts
about addresses and names, shared by the dns layer (which asks for a certificate when an answer
looks wrong) and the classifier (which judges the answers).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from probe import failures as F

RDTYPES = ("A", "AAAA")
_MAX_CNAMES = 16  # a longer chain (or a loop) in one answer is not followed further
_RCODE_FACTS = {"NXDOMAIN": F.NXDOMAIN, "SERVFAIL": F.SERVFAIL, "REFUSED": F.REFUSED}

# Names under these suffixes are private by design (RFC 6761, RFC 8375, common LAN habits): a
# private answer for them is expected, never a bogon.
PRIVATE_SUFFIXES = (
    "test", "example", "invalid", "localhost", "local", "lan", "home", "internal", "intranet",
    "corp", "private", "home.arpa",
)


@dataclass(frozen=True)
class Reply:
    """What one DNS reply said: its rcode, the addresses it gave, their lowest TTL."""

    rcode: str
    addresses: tuple[str, ...]
    ttl: int | None = None
    truncated: bool = False

    def same_as(self, other: Reply) -> bool:
        return self.rcode == other.rcode and set(self.addresses) == set(other.addresses)

    @property
    def failure(self) -> str | None:
        """The failure fact this reply amounts to, or None when it gave addresses."""
        if self.addresses:
            return None
        if self.rcode == "NOERROR":
            return F.NO_ANSWER
        return _RCODE_FACTS.get(self.rcode, F.SERVFAIL)  # FORMERR, NOTIMP...: the rcode tells


def make_query(name: str, rdtype: str, *, doh: bool = False) -> dns.message.Message:
    """A recursive query for `name`; for DoH with id 0, which keeps answers cacheable
    (RFC 8484 section 4.1)."""
    query = dns.message.make_query(name, rdtype)
    if doh:
        query.id = 0
    return query


def parse_reply(wire: bytes, query: dns.message.Message) -> Reply | None:
    """The reply in `wire` if it answers `query`; None for garbage or someone else's reply."""
    try:
        message = dns.message.from_wire(wire)
        if not query.is_response(message):
            return None
    except (dns.exception.DNSException, ValueError, IndexError, KeyError, UnicodeError):
        return None  # a hostile or broken peer's bytes: not a reply
    # Address records count only for the name asked, or a name it is a CNAME of: an A record
    # for another name in the answer section is not an answer to the question.
    names = {query.question[0].name} if query.question else set()
    for _ in range(_MAX_CNAMES):
        more = {rdata.target for rrset in message.answer if rrset.name in names
                and rrset.rdtype == dns.rdatatype.CNAME for rdata in rrset} - names
        if not more:
            break
        names |= more
    addresses: list[str] = []
    ttls: list[int] = []
    for rrset in message.answer:
        if (rrset.rdclass == dns.rdataclass.IN and rrset.name in names
                and rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)):
            addresses.extend(str(rdata.address) for rdata in rrset)
            ttls.append(rrset.ttl)
    return Reply(
        rcode=dns.rcode.to_text(message.rcode()),
        addresses=tuple(dict.fromkeys(addresses)),
        ttl=min(ttls) if ttls else None,
        truncated=bool(message.flags & dns.flags.TC),
    )


def frame_tcp(wire: bytes) -> bytes:
    """A message as sent over TCP: after a two-byte length (RFC 1035 section 4.2.2)."""
    return len(wire).to_bytes(2, "big") + wire


def system_nameservers(text: str) -> list[str]:
    """The `nameserver` addresses in resolv.conf text, in order."""
    servers = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver" and is_address(words[1].split("%")[0]):
            servers.append(words[1])
    return servers


# --- predicates ---------------------------------------------------------------------------------


def is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_bogon(address: str) -> bool:
    """True for an address no public server can have: private, loopback, link-local, shared,
    documentation, multicast, unspecified or otherwise reserved."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True  # not an address at all
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def is_public_name(name: str) -> bool:
    """A name that should resolve to a public address (has a dot, no private suffix)."""
    name = name.rstrip(".").lower()
    if "." not in name:
        return False
    return not any(name == s or name.endswith("." + s) for s in PRIVATE_SUFFIXES)


def family(address: str) -> int:
    return 6 if ":" in address else 4


def shares_address(answers: Iterable[str], references: Iterable[str]) -> bool:
    """Do the answers share an address with the references, in the family of the first answer
    (the one an application connects to)? A forged A record must not hide behind a genuine
    AAAA one; references of the other family only are compared as they are."""
    answers, references = list(answers), set(references)
    if not answers:
        return False
    first = family(answers[0])
    mine = {a for a in answers if family(a) == first}
    theirs = {r for r in references if family(r) == first} or references
    return bool(mine & theirs)
