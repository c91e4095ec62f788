"""The one scrubber of text a server sent: the user's address and source ports never stored.

Servers can echo what they see of us into any text they send back: a QUIC close reason, an
illegal header line quoted in an error, a certificate's subject, a redirect's host name, a TURN
server's SOFTWARE. That text is kept for `detail` (it helps a researcher), so it is scrubbed
first, in the facts' text fields only (`Facts.TEXT`), never in the fields that name a target
(addresses we connected to, a resolver's answers).

Strategy: mask every IP address in any spelling an echo takes (dotted, dashed as in
`127-0-0-1.host`, IPv4-mapped `::ffff:1.2.3.4`, IPv6 with or without brackets and zone, with
or without a `:port`), and every number equal to a source port or an address this run used
(`Scrubber.know`), so that "(port 59103)" goes too. Control characters are dropped and the text
is cut to a length only after masking, so a cut can never leave half an address behind.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from contextvars import ContextVar

MAX_TEXT = 200  # server text kept for `detail`: enough to read, never an essay
MASK = "<address>"
PORT_MASK = "<port>"

_V4 = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# Dotted, or dashed/underscored as host names spell addresses (127-0-0-1.portal.test), with a
# port after it the same ways.
_IPV4 = re.compile(rf"(?<![\d.])(?:{_V4}[.\-_]){{3}}{_V4}(?!\d)(?:[:.\-_]\d{{1,5}}(?!\d))?")
# IPv6 candidates (hex, colons, an IPv4 tail, a zone, brackets, a port), checked by ipaddress.
_IPV6 = re.compile(r"\[?(?<![\w:.])[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?:%[\w.-]+)?\]?(?::\d{1,5})?")


def _is_ipv6(candidate: str) -> bool:
    core = candidate
    if core.startswith("["):
        core = core[1:].rsplit("]", 1)[0]
    core = core.split("%", 1)[0]
    for text in (core, core.rsplit(":", 1)[0]):  # with, then without, a trailing :port
        try:
            ipaddress.IPv6Address(text)
            return True
        except ValueError:
            continue
    return False


def _mask_ipv6(match: re.Match[str]) -> str:
    return MASK if _is_ipv6(match.group(0)) else match.group(0)


_NUMBER = re.compile(r"(?<![\w.:])\d+(?![\w:])")  # a number standing alone, as ports are


class Scrubber:
    """Masks addresses, and the run's own ports and addresses, in server-supplied text."""

    def __init__(self) -> None:
        self._numbers: set[str] = set()  # ports: a look-up per number in the text
        self._other: set[str] = set()  # anything else we were told is ours: one pattern
        self._pattern: re.Pattern[str] | None = None

    def know(self, *values: str | int | None) -> None:
        """Remember ports (numbers) and addresses this run used or was told are ours."""
        for value in values:
            text = str(value).strip("[]") if value is not None else ""
            if len(text) < 2:  # 1-digit "ports" would mask all
                continue
            if text.isdigit():
                self._numbers.add(text)  # every socket brings a port: no pattern to rebuild
            elif text not in self._other:
                self._other.add(text)
                self._pattern = None

    def know_socket(self, sockname: Iterable[object]) -> None:
        """A socket's own (address, port, ...): both are ours."""
        parts = list(sockname)[:2]
        self.know(*(p if isinstance(p, str | int) else None for p in parts))

    def _port(self, match: re.Match[str]) -> str:
        return PORT_MASK if match.group(0) in self._numbers else match.group(0)

    def __call__(self, text: str | None, limit: int = MAX_TEXT) -> str | None:
        if text is None:
            return None
        text = "".join(c for c in text if c.isprintable())
        text = _IPV4.sub(MASK, _IPV6.sub(_mask_ipv6, text))
        if self._other:
            if self._pattern is None:
                alternatives = "|".join(re.escape(k) for k in sorted(self._other, key=len,
                                                                    reverse=True))
                self._pattern = re.compile(rf"(?<![\w.:])(?:{alternatives})(?![\w:])")
            text = self._pattern.sub(PORT_MASK, text)
        if self._numbers:
            text = _NUMBER.sub(self._port, text)
        return text if len(text) <= limit else text[: limit - 1] + "…"


# The scrubber of the run in progress (set by the engine), so that code deep in a layer that
# opens a socket can say the socket is ours without a context threaded through every call.
CURRENT: ContextVar[Scrubber | None] = ContextVar("probe_scrubber", default=None)


def remember(*values: str | int | None) -> None:
    """Tell the run's scrubber about addresses or ports of ours (a STUN-mapped address)."""
    scrubber = CURRENT.get()
    if scrubber is not None:
        scrubber.know(*values)


def remember_socket(sock: socket.socket) -> None:
    """Tell the run's scrubber a socket's own address and port."""
    scrubber = CURRENT.get()
    if scrubber is not None:
        try:
            scrubber.know_socket(sock.getsockname())
        except OSError:  # not bound yet, or already closed: nothing of ours to hide
            pass


def scrub(text: str | None, limit: int = MAX_TEXT) -> str | None:
    """Scrub text with no knowledge of the run: addresses in any spelling are masked."""
    return _PLAIN(text, limit)


_PLAIN = Scrubber()
