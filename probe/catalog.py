"""The catalog (probes.yaml): typed models, loading with file:line:col errors, country profiles.

Strategy: `yamlpos` parses the file keeping each node's position and the comment beside each
list item; the document is validated by pydantic as a whole, and every validation error is
mapped back to the position of the node (or key) it names. So one pass reports every problem,
each where the user can find it. Checks that need another field (does `sni` fit this scheme?)
are field validators reading the already validated `url`, so they too are located at the field.
A profile (`--profile ru`) is a small overlay file validated the same way and merged in.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from probe.errors import CatalogError, CatalogProblem, UsageError

if TYPE_CHECKING:
    from probe.wire.flow import CallPlan

SCHEMES = ("dns", "tcp", "tls", "https", "quic", "stun", "turn", "reflect")
DEFAULT_PORTS = {"tls": 443, "https": 443, "quic": 443, "stun": 3478, "turn": 3478,
                 "reflect": 3478}
# reflect://HOST:PORT?shape=S: the probe-echo datagram shapes of probe/wire/echo.py
REFLECT_SHAPES = ("stun", "whatsapp", "telegram", "rtp", "random")
FLOW_SCHEMES = ("stun", "turn", "reflect")  # the schemes a call-like flow applies to
M = TypeVar("M", bound=BaseModel)
PLATFORM_ID = re.compile(r"^[a-z0-9_-]+$")
TLS_SCHEMES = ("tls", "https", "quic")  # the schemes that do a TLS handshake
UDP_SCHEMES = ("quic", "stun", "turn", "reflect")
MAX_DURATION = 86_400.0  # a day: anything longer is a typo, and overflows some timers
_SPACE = re.compile(r"\s")
_HOSTNAME = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*\.?$")


# --- units ---------------------------------------------------------------------------------

_DURATION_RE = r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)\s*$"
_RATE_RE = r"^\s*(\d+(?:\.\d+)?)\s*(bit/s|kbit/s|Mbit/s|Gbit/s)\s*$"
_PERCENT_RE = r"^\s*(\d+(?:\.\d+)?)\s*%\s*$"
_PACKET_RATE_RE = r"^\s*(\d+(?:\.\d+)?)\s*(/s)\s*$"
_SIZE_RE = r"^\s*(\d+(?:\.\d+)?)\s*(B|KB)\s*$"
_DURATION = re.compile(_DURATION_RE)
_PACKET_RATE = re.compile(_PACKET_RATE_RE)
_SIZE = re.compile(_SIZE_RE)
MAX_PACKET_RATE = 1000.0  # a call sends 50; more is a flood, not a call
MIN_DATAGRAM, MAX_DATAGRAM = 28, 1200
_RATE = re.compile(_RATE_RE)
_PERCENT = re.compile(_PERCENT_RE)


def _number(value: Any, what: str) -> float | None:
    """A bare YAML number as a float (None for a string); refuses booleans, inf and nan."""
    if isinstance(value, bool):
        raise ValueError(f"not a {what}: {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"not a {what}: {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"not a {what}: {value!r}")
    return None


def _parse_unit(value: Any, what: str, pattern: re.Pattern[str], scale: dict[str, float],
                example: str) -> float:
    """A bare YAML number, or a number with one of `scale`'s units -> a positive float."""
    number = _number(value, what)
    if number is None:
        m = pattern.match(value)
        if not m:
            raise ValueError(f"bad {what} {value!r} (use e.g. {example})")
        number = float(m[1]) * scale[m[2]]
    if number <= 0:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return number


def parse_duration(value: Any) -> float:
    """'5s', '300ms', '2m' or a bare number of seconds -> seconds."""
    seconds = _parse_unit(value, "duration", _DURATION, {"ms": 0.001, "s": 1.0, "m": 60.0},
                          "300ms, 5s, 2m")
    if seconds > MAX_DURATION:
        raise ValueError(f"duration too long: {value!r} (at most a day)")
    return seconds


def parse_rate(value: Any) -> float:
    """'1Mbit/s', '128kbit/s' or a bare number of bits per second -> bits per second."""
    return _parse_unit(value, "rate", _RATE, {"bit/s": 1.0, "kbit/s": 1e3, "Mbit/s": 1e6,
                                              "Gbit/s": 1e9}, "128kbit/s, 1Mbit/s")


def parse_packet_rate(value: Any) -> float:
    """'50/s' or a bare number of packets per second -> packets per second (at most 1000)."""
    rate = _parse_unit(value, "packet rate", _PACKET_RATE, {"/s": 1.0}, "50/s")
    if rate > MAX_PACKET_RATE:
        raise ValueError(f"packet rate too high: {value!r} (at most {MAX_PACKET_RATE:g}/s)")
    return rate


def parse_size(value: Any) -> int:
    """'160B', '1KB' or a bare number of bytes -> bytes (28 to 1200: a STUN request's header
    and FINGERPRINT, up to what fits any path's MTU)."""
    size = _parse_unit(value, "size", _SIZE, {"B": 1.0, "KB": 1000.0}, "160B")
    if not MIN_DATAGRAM <= size <= MAX_DATAGRAM or size != int(size):
        raise ValueError(f"size must be a whole number of bytes from {MIN_DATAGRAM} to "
                         f"{MAX_DATAGRAM}, got {value!r}")
    return int(size)


def parse_percent(value: Any) -> float:
    """'10%' or a fraction between 0 and 1 -> a fraction."""
    fraction = _number(value, "percentage")
    if fraction is None:
        m = _PERCENT.match(value)
        if not m:
            raise ValueError(f"bad percentage {value!r} (use e.g. 10%)")
        fraction = float(m[1]) / 100
    if not 0 <= fraction <= 1:
        raise ValueError(f"percentage must be between 0% and 100%, got {value!r}")
    return fraction


def _unit_schema(pattern: str, description: str) -> WithJsonSchema:
    return WithJsonSchema({
        "anyOf": [{"type": "number", "exclusiveMinimum": 0},
                  {"type": "string", "pattern": pattern}],
        "description": description,
    })


Duration = Annotated[float, BeforeValidator(parse_duration),
                     _unit_schema(_DURATION_RE, "seconds, or a string like 300ms, 5s, 2m")]
Rate = Annotated[float, BeforeValidator(parse_rate),
                 _unit_schema(_RATE_RE, "bits per second, or a string like 128kbit/s, 1Mbit/s")]
Percent = Annotated[float, BeforeValidator(parse_percent), WithJsonSchema({
    "anyOf": [{"type": "number", "minimum": 0, "maximum": 1},
              {"type": "string", "pattern": _PERCENT_RE}],
    "description": "a fraction 0..1, or a string like 10%",
})]
PacketRate = Annotated[float, BeforeValidator(parse_packet_rate),
                       _unit_schema(_PACKET_RATE_RE, "packets per second, or a string like 50/s")]
Size = Annotated[int, BeforeValidator(parse_size),
                 _unit_schema(_SIZE_RE, "bytes, or a string like 160B")]
Id = Annotated[str, StringConstraints(pattern=PLATFORM_ID.pattern)]


# --- endpoints -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """What a target URL names: scheme, host, port, path and query options."""

    scheme: str
    host: str
    port: int | None
    path: str
    query: dict[str, str]

    @functools.cached_property
    def is_ip(self) -> bool:  # cached: asked several times per sample, on the hot path
        return is_ip_literal(self.host)


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_hostname(host: str) -> str:
    """A DNS name as sent on the wire (IDNA for non-ASCII); raises ValueError if it is not one."""
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"bad host name {host!r}") from None
    if len(host) > 253 or not _HOSTNAME.match(host.lower()):
        raise ValueError(f"bad host name {host!r}")
    return host.lower()


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """'1.2.3.4', '1.2.3.4:5353', '[::1]:53' or '::1' -> (host, port)."""
    if text.startswith("["):
        if "]" not in text:
            raise ValueError(f"unclosed '[' in {text!r}")
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest[1:].isdigit() and rest.startswith(":") else (
            default_port if not rest else -1)
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p) if p.isdigit() else -1
    else:
        host, port = text, default_port
    if not is_ip_literal(host):
        raise ValueError(f"expected an IP address with an optional port, got {text!r}")
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return host, port


def parse_endpoint(url: str) -> Endpoint:
    """Split and check a target URL; raises ValueError with a message for the user."""
    if not isinstance(url, str):
        raise ValueError(f"not a target URL: {url!r} (expected scheme://host[:port])")
    return _parse_endpoint(url)


# The common forms, recognised in one step: a lowercase scheme, an IPv4 address (exactly the
# forms `ipaddress` takes) or a lowercase host name, an optional port, a path and a query
# (split as `urlsplit` does). For these `_simple_endpoint` gives the Endpoint the full parse
# below would (a test compares them); anything else, and every refusal, is left to the full
# parse. It makes a 10,000-target catalog load about 0.1 s faster.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_SIMPLE_URL = re.compile(r"([a-z]+)://([a-z0-9_.-]+)(?::([0-9]{1,5}))?(/[^?#\s]*)?(?:\?([^#\s]*))?")


def _simple_endpoint(url: str) -> Endpoint | None:
    m = _SIMPLE_URL.fullmatch(url)
    if m is None:
        return None
    scheme, host, port_text, path, query_text = m.groups()
    if scheme not in SCHEMES or not (_IPV4.fullmatch(host) or (len(host) <= 253
                                                               and _HOSTNAME.match(host))):
        return None
    if port_text is None:
        if scheme == "tcp":
            return None
        port = DEFAULT_PORTS.get(scheme)
    else:
        port = int(port_text)
        if scheme == "dns" or not 0 < port < 65536:
            return None
    query: dict[str, str] = {}
    if query_text:
        from urllib.parse import parse_qs

        query = {k: v[-1] for k, v in parse_qs(query_text, keep_blank_values=True).items()}
    if scheme == "turn" and query.setdefault("transport", "udp") not in ("udp", "tcp"):
        return None
    if scheme == "reflect":
        return None  # its shape is checked by the full parse
    if scheme != "https" and (path not in (None, "/") or set(query) - {"transport"}
                              or (scheme != "turn" and query)):
        return None
    return Endpoint(scheme, host, port, path or "/", query)


@functools.lru_cache(maxsize=4096)  # each target's URL is checked twice while validating
def _parse_endpoint(url: str) -> Endpoint:
    return _simple_endpoint(url) or _parse_endpoint_fully(url)


def _parse_endpoint_fully(url: str) -> Endpoint:
    if "://" not in url:
        raise ValueError(f"not a target URL: {url!r} (expected scheme://host[:port])")
    scheme_text = url.partition("://")[0]
    scheme = scheme_text.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme_text!r} (one of {', '.join(SCHEMES)})")
    if _SPACE.search(url):
        raise ValueError(f"spaces in target URL {url!r}")
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(url)  # raises ValueError itself for a broken [IPv6] literal
    if parts.username is not None or parts.password is not None:
        raise ValueError("user names and passwords do not belong in a target URL")
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"port out of range (1-65535) in {url!r}") from None
    if port == 0:
        raise ValueError(f"port out of range (1-65535) in {url!r}")
    if not is_ip_literal(host):
        host = check_hostname(host)
    if scheme == "dns" and port is not None:
        raise ValueError("dns:// targets take no port")
    if scheme == "tcp" and port is None:
        raise ValueError(f"tcp:// targets need a port: {url!r}")
    if port is None:
        port = DEFAULT_PORTS.get(scheme)
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    if scheme == "turn":
        transport = query.setdefault("transport", "udp")
        if transport not in ("udp", "tcp"):
            raise ValueError(f"turn transport must be udp or tcp, got {transport!r}")
        unknown = set(query) - {"transport"}
    elif scheme == "https":
        unknown = set()  # an https query is part of the request
    elif scheme == "reflect":
        if query.get("transport", "udp") not in ("udp", "tls"):
            raise ValueError(f"reflect transport must be udp or tls, got {query['transport']!r}")
        if query.get("transport") != "tls":
            shape = query.setdefault("shape", "stun")
            if shape not in REFLECT_SHAPES:
                raise ValueError(f"reflect shape must be one of {', '.join(REFLECT_SHAPES)}, "
                                 f"got {shape!r}")
        unknown = set(query) - {"shape", "transport"}
    else:
        unknown = set(query)
    if unknown:
        raise ValueError(f"unknown URL option(s) {', '.join(sorted(unknown))}")
    if scheme != "https" and parts.path not in ("", "/"):
        raise ValueError(f"{scheme}:// targets take no path")
    return Endpoint(scheme, host.lower(), port, parts.path or "/", query)


# --- models --------------------------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


class Call(Strict):
    """How a `calls` target's call-like flow is shaped; what is left out keeps its default
    (README "Calls": 50 requests/s of 160 bytes for 5 s, and why). In the catalog `call: false`
    opts out and `call: true` opts in with the defaults."""

    enabled: bool = True
    rate: PacketRate | None = None
    size: Size | None = None
    duration: Duration | None = None


def _call(value: Any) -> Any:
    return {"enabled": value} if isinstance(value, bool) else value


_CALL_SCHEMA = Call.model_json_schema()
_CALL_SCHEMA["properties"].pop("enabled")
CallOption = Annotated[Call, BeforeValidator(_call), WithJsonSchema({
    "anyOf": [{"type": "boolean"}, _CALL_SCHEMA],
    "description": "false: no call-like flow; true or a mapping: one (rate, size, duration)",
})]


class Expect(Strict):
    """Thresholds for 'degraded' when no baseline says otherwise (seconds, bit/s, fraction)."""

    max_rtt: Duration | None = None
    min_throughput: Rate | None = None
    max_loss: Percent | None = None


def _ca_path(value: str | None, info: ValidationInfo, what: str = "CA file") -> str | None:
    """Make a file path absolute against the catalog's directory, and check it exists."""
    base = (info.context or {}).get("base_dir")
    if value is None or base is None:
        return value
    path = Path(base, value).resolve()
    if not path.is_file():
        raise ValueError(f"{what} not found: {value!r} (looked at {path})")
    return str(path)


Port = Annotated[int, Field(ge=1, le=65535)]


class Reflector(Strict):
    """A `probe reflect` server of a research team's, outside the censored network: the calls
    diagnosis measures on it instead of inferring (README "Running a reflector")."""

    address: str = Field(description="the reflector's IP address or host name")
    udp_ports: list[Port] = Field(default=[3478, 3480, 1400], min_length=1,
                                  description="call ports: WhatsApp 3478/3480, Telegram 1400")
    control_port: Port = Field(default=40000, description="a UDP port no censor filters")
    shapes: list[Literal["stun", "whatsapp", "telegram", "rtp", "random"]] = Field(
        default=["stun", "random"], min_length=1)
    duration: Duration = 3.0  # each flow's, at a call's rate and size
    tls_port: Port | None = Field(default=443, description="its TLS port (null: no TLS test)")
    token_file: str | None = None  # the team's token (relative to the catalog)
    fingerprint: str | None = None  # SPKI SHA-256 of its TLS certificate, pinned

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return value if is_ip_literal(value) else check_hostname(value)

    @field_validator("token_file")
    @classmethod
    def _token_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _ca_path(value, info, what="token file")

    @field_validator("fingerprint")
    @classmethod
    def _fingerprint(cls, value: str | None) -> str | None:
        if value is None:
            return value
        digits = value.replace(":", "").lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digits):
            raise ValueError("fingerprint must be a SHA-256 in hex (64 digits, colons allowed)")
        return digits


class Settings(Strict):
    timeout: Duration = 5.0
    attempts: int = Field(default=3, ge=1, le=1000)
    concurrency: int = Field(default=256, ge=1, le=100_000)
    resolver: str = "system"
    doh: str | None = None
    ca_file: str | None = None
    control_sni: str | None = None
    reflector: Reflector | None = None

    @field_validator("resolver")
    @classmethod
    def _resolver(cls, value: str) -> str:
        if value != "system":
            split_host_port(value, 53)
        return value

    @field_validator("doh")
    @classmethod
    def _doh(cls, value: str | None) -> str | None:
        if value is not None:
            if not value.startswith("https://"):
                raise ValueError(f"doh must be an https:// URL, got {value!r}")
            parse_endpoint(value)
        return value

    @field_validator("control_sni")
    @classmethod
    def _control_sni(cls, value: str | None) -> str | None:
        return None if value is None else check_hostname(value)

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _ca_path(value, info)


def _scheme(info: ValidationInfo) -> str | None:
    """The scheme of the target being validated, when its url was valid."""
    url = info.data.get("url")
    return url.partition("://")[0].lower() if url else None


class Target(Strict):
    """One endpoint to test; a bare URL string in the catalog is `{url: ...}`."""

    url: str = Field(description="scheme://host[:port][/path]; the scheme names the deepest layer")
    name: str | None = None
    sni: str | None = None
    address: str | None = None
    ca_file: str | None = None
    alpn: list[str] | None = None
    timeout: Duration | None = None
    attempts: int | None = Field(default=None, ge=1, le=1000)
    expect: Expect = Expect()
    sustain: Duration | None = None
    call: CallOption | None = None  # stun/turn: false opts out of the call-like flow

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"url": value} if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parse_endpoint(value)
        return value

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if not is_ip_literal(value):
            raise ValueError(f"address must be an IP address, got {value!r}")
        if _scheme(info) == "dns":
            raise ValueError("address does not apply to dns:// targets (they only resolve)")
        return value

    @field_validator("sni", "alpn")
    @classmethod
    def _tls_only(cls, value: Any, info: ValidationInfo) -> Any:
        scheme = _scheme(info)
        if scheme == "reflect" and "transport=tls" in str(info.data.get("url")):
            scheme = "tls"  # a TLS handshake with the reflector
        if value is not None and scheme and scheme not in TLS_SCHEMES:
            raise ValueError(f"{info.field_name} does not apply to {scheme}:// targets "
                             f"(only {', '.join(TLS_SCHEMES)})")
        if info.field_name == "sni" and value is not None:
            check_hostname(value)
        return value

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        scheme = _scheme(info)
        if value is not None and scheme and scheme not in TLS_SCHEMES:
            raise ValueError(f"ca_file does not apply to {scheme}:// targets "
                             f"(only {', '.join(TLS_SCHEMES)})")
        return _ca_path(value, info)

    @field_validator("sustain")
    @classmethod
    def _sustain(cls, value: float | None, info: ValidationInfo) -> float | None:
        scheme = _scheme(info)
        if value is not None and scheme and scheme != "stun":
            raise ValueError("sustain applies to stun:// targets only")
        return value

    @field_validator("call")
    @classmethod
    def _call_scheme(cls, value: Call | None, info: ValidationInfo) -> Call | None:
        scheme = _scheme(info)
        if value is not None and value.enabled and scheme and scheme not in FLOW_SCHEMES:
            raise ValueError("call applies to stun://, turn:// and reflect:// targets only")
        return value

    @field_validator("expect")
    @classmethod
    def _expect(cls, value: Expect, info: ValidationInfo) -> Expect:
        scheme = _scheme(info)
        if scheme and value.min_throughput is not None and scheme != "https":
            raise ValueError("expect.min_throughput applies to https:// targets only")
        if scheme and value.max_loss is not None and scheme not in FLOW_SCHEMES:
            raise ValueError("expect.max_loss applies to stun://, turn:// and reflect:// "
                             "targets only")
        return value

    @functools.cached_property
    def endpoint(self) -> Endpoint:
        """What the url names, parsed when first asked for (`_url` has checked it): a catalog
        that is only validated never builds one, and no validator runs after each target."""
        return parse_endpoint(self.url)


class Control(Target):
    """A target expected to work from anywhere; `domestic` ones sit inside the country."""

    domestic: bool = False


class Feature(Strict):
    """A feature's targets; `need` says whether any one or all of them must work."""

    need: Literal["any", "all"] = "all"
    targets: list[Target] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, value: Any) -> Any:
        return {"targets": value} if isinstance(value, list) else value


class Platform(Strict):
    name: str | None = None
    features: dict[Id, Feature] = Field(min_length=1)


class Catalog(Strict):
    version: Literal[1] = 1
    settings: Settings = Settings()
    controls: list[Control] = []
    platforms: dict[Id, Platform] = Field(min_length=1)


class Profile(Strict):
    """A country overlay: extra (domestic) controls and platforms, optional selection and order."""

    version: Literal[1] = 1
    name: str | None = None
    settings: Settings | None = None  # only the keys given override the catalog's
    controls: list[Control] = []
    platforms: dict[Id, Platform] = {}
    only: list[Id] | None = None
    order: list[Id] = []


# --- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One target as the engine runs it: where it sits in the catalog and its settings."""

    platform: str | None  # None for a control
    feature: str | None  # None for a control
    target: Target
    timeout: float
    attempts: int
    ca_files: tuple[str, ...]
    domestic: bool = False
    call: CallPlan | None = None  # stun/turn measured as a call uses the path

    @functools.cached_property
    def endpoint(self) -> Endpoint:  # cached: a pydantic private attribute is slow to reach
        return self.target.endpoint

    @property
    def is_control(self) -> bool:
        return self.platform is None and self.feature is None

    @property
    def is_reflector(self) -> bool:
        return self.platform is None and self.feature == REFLECTOR


CALLS_FEATURE = "calls"
REFLECTOR = "reflector"  # the feature of the flows to settings.reflector (no platform)


def reflector_targets(reflector: Reflector, names: Sequence[str] = ()) -> list[Target]:
    """One call-like flow per call port and shape, and per shape on the control port; and a
    TLS handshake naming each of `names` (one per platform): the differences name the technique
    on an address nobody else uses (classify/calls.py)."""
    host = f"[{reflector.address}]" if ":" in reflector.address else reflector.address
    call = Call(duration=reflector.duration)
    ports = [(port, "port") for port in reflector.udp_ports]
    ports.append((reflector.control_port, "control port"))
    flows = [Target(url=f"reflect://{host}:{port}?shape={shape}", call=call,
                    name=f"reflector {kind} {port} {shape}")
             for port, kind in ports for shape in reflector.shapes]
    if reflector.tls_port is None:
        return flows
    return flows + [Target(url=f"reflect://{host}:{reflector.tls_port}?transport=tls", sni=name,
                           name=f"reflector tls {name}") for name in dict.fromkeys(names)]


def tls_names(platforms: Iterable[Platform]) -> list[str]:
    """The first name each platform's TLS or HTTPS targets send as SNI."""
    names = []
    for platform in platforms:
        for feature in platform.features.values():
            found = next((t.sni or t.endpoint.host for t in feature.targets
                          if t.endpoint.scheme in ("tls", "https") and not t.endpoint.is_ip),
                         None)
            if found is not None:
                names.append(found)
                break
    return names


def call_plan(feature: str | None, target: Target) -> CallPlan | None:
    """The call-like flow a stun/turn target is measured with: by default in a feature named
    `calls`, anywhere with `call:` options, never with `call: false`. A reflect:// target is
    always one."""
    options = target.call
    scheme = target.endpoint.scheme
    if scheme not in FLOW_SCHEMES or (options and not options.enabled and scheme != "reflect"):
        return None
    if options is None and feature != CALLS_FEATURE and scheme != "reflect":
        return None
    from probe.wire.flow import CallPlan

    options = options or Call()
    defaults = CallPlan()
    return CallPlan(rate=options.rate or defaults.rate, size=options.size or defaults.size,
                    duration=options.duration or defaults.duration)


# (platform, feature, index); a control is (None, None, index)
SourceKey = tuple[str | None, str | None, int]


@dataclass(frozen=True)
class LoadedCatalog:
    """A validated catalog with where it came from, and the comment (source) of each target."""

    catalog: Catalog
    path: str
    sha256: str
    sources: Mapping[SourceKey, str] = field(default_factory=dict)
    profile: str | None = None  # profile name applied, if any
    profile_path: str | None = None
    profile_sha256: str | None = None

    @property
    def settings(self) -> Settings:
        return self.catalog.settings

    def source_of(self, platform: str | None, feature: str | None, index: int) -> str | None:
        """The comment written beside (or just above) a target; controls: platform=None."""
        return self.sources.get((platform, feature, index))

    def jobs(self, only: set[str] | None = None) -> Iterator[Job]:
        """Controls first, then every target of every (selected) platform, in catalog order.

        CA files are made absolute when a catalog is loaded from a file; a relative one left
        (catalogs from `loads` without a base) is taken relative to the catalog's directory.
        """
        s = self.catalog.settings
        base = Path(self.path).parent

        def job(platform: str | None, feature: str | None, t: Target) -> Job:
            cas = [c for c in (s.ca_file, t.ca_file) if c]
            return Job(
                platform=platform,
                feature=feature,
                target=t,
                timeout=t.timeout or s.timeout,
                attempts=t.attempts or s.attempts,
                ca_files=tuple(str((base / c).resolve()) for c in cas),
                domestic=isinstance(t, Control) and t.domestic,
                call=call_plan(feature, t),
            )

        for c in self.catalog.controls:
            yield job(None, None, c)
        if s.reflector is not None:
            chosen = [p for pid, p in self.catalog.platforms.items() if not only or pid in only]
            for target in reflector_targets(s.reflector, tls_names(chosen)):
                yield job(None, REFLECTOR, target)
        for pid, platform in self.catalog.platforms.items():
            if only and pid not in only:
                continue
            for fid, feature in platform.features.items():
                for t in feature.targets:
                    yield job(pid, fid, t)


def override_settings(
    loaded: LoadedCatalog,
    *,
    timeout: str | None,
    attempts: int | None,
    concurrency: int | None,
) -> LoadedCatalog:
    """The catalog with command-line settings laid over its own."""
    update: dict[str, Any] = {}
    if timeout is not None:
        try:
            update["timeout"] = parse_duration(timeout)
        except ValueError as exc:
            raise UsageError(f"--timeout: {exc}") from None
    if attempts is not None:
        update["attempts"] = attempts
    if concurrency is not None:
        update["concurrency"] = concurrency
    if not update:
        return loaded
    settings = loaded.catalog.settings.model_copy(update=update)
    catalog = loaded.catalog.model_copy(update={"settings": settings})
    # Targets keep their own timeout/attempts when they set one; the rest follow the override.
    return type(loaded)(**{**loaded.__dict__, "catalog": catalog})


# --- loading -------------------------------------------------------------------------------


def _unwrap(annotation: Any) -> Any:
    """Optional[X] / Annotated[X, ...] -> X."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin is Union or str(origin) == "<class 'types.UnionType'>":
            args = [a for a in get_args(annotation) if a is not type(None)]
            annotation = args[0] if len(args) == 1 else annotation
            if len(args) != 1:
                return annotation
        else:
            return annotation


def _model_at(root: type[BaseModel], path: Sequence[str | int]) -> Any:
    """The model (or type) that validates the node at a user path, e.g. a Target for a target."""
    current: Any = root
    for part in path:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            if isinstance(part, int) and current is Feature:  # a feature written as a list
                current = Target
                continue
            info = current.model_fields.get(str(part))
            if info is None:
                return None
            current = info.annotation
            continue
        origin = get_origin(current)
        if origin is list and isinstance(part, int):
            current = get_args(current)[0]
        elif origin is dict and isinstance(part, str):
            current = get_args(current)[1]
        else:
            return None
    return _unwrap(current)


def _allowed_keys(root: type[BaseModel]) -> Any:
    def allowed(path: Sequence[str | int]) -> list[str]:
        model = _model_at(root, path)
        if isinstance(model, type) and issubclass(model, BaseModel):
            return list(model.model_fields)
        return []

    return allowed


_EXPECTED = {
    Catalog: "a catalog is a mapping with version, settings, controls and platforms",
    Profile: "a profile is a mapping with name, settings, controls, platforms, only, order",
    Target: "expected a target URL or a mapping with 'url'",
    Control: "expected a target URL or a mapping with 'url'",
    Feature: "expected a list of targets, or a mapping with 'need' and 'targets'",
    Platform: "expected a mapping with 'name' and 'features'",
    Settings: "expected a mapping of settings",
    Expect: "expected a mapping with max_rtt, min_throughput, max_loss",
    Call: "expected true, false or a mapping with rate, size, duration",
}


def _explainer(root: type[BaseModel]) -> Any:
    """Messages that need to know which model sits at the path."""

    def explain(path: tuple[str | int, ...], error: Any) -> str | None:
        kind = error["type"]
        given = error.get("input")
        if kind == "string_pattern_mismatch" and path and path[-2:-1] in (("platforms",),
                                                                           ("features",)):
            what = "platform" if path[-2] == "platforms" else "feature"
            return (f"bad {what} id {str(path[-1])!r}: use lowercase letters, digits, "
                    "'_' and '-'")
        if kind == "string_pattern_mismatch":
            return f"bad id {given!r}: use lowercase letters, digits, '_' and '-'"
        if kind in ("model_type", "model_attributes_type", "dict_type"):
            model = _model_at(root, path)
            if model in _EXPECTED:
                shown = repr(given) if len(repr(given)) <= 60 else repr(given)[:57] + "..."
                return _EXPECTED[model] + ("" if given is None else f", got {shown}")
        if kind == "too_short" and path:
            last = path[-1]
            if last == "platforms":
                return "no platforms: a catalog needs at least one"
            if last == "features":
                return "no features: a platform needs at least one"
            if last == "targets" or _model_at(root, path) is Feature:
                return "no targets: a feature needs at least one"
        if kind == "literal_error" and path == ("version",):
            return f"unsupported version {given!r} (this probe reads version 1)"
        return None

    return explain


def _validate(model: type[M], text: str, filename: str, base_dir: str | None) -> tuple[M, Any]:
    """Parse and validate; raises CatalogError with every problem, sorted by position."""
    from probe import yamlpos

    return yamlpos.validate(model, text, filename, {"base_dir": base_dir},
                            _allowed_keys(model), _explainer(model))


def _sources(parsed: Any, catalog: Catalog | Profile) -> dict[SourceKey, str]:
    """Target comments keyed by (platform, feature, index), whichever form a feature took."""
    comments = parsed.comments
    out: dict[SourceKey, str] = {}
    for i in range(len(catalog.controls)):
        if ("controls", i) in comments:
            out[(None, None, i)] = comments[("controls", i)]
    for pid, platform in catalog.platforms.items():
        for fid, feature in platform.features.items():
            base = ("platforms", pid, "features", fid)
            for i in range(len(feature.targets)):
                text = comments.get(base + (i,)) or comments.get(base + ("targets", i))
                if text:
                    out[(pid, fid, i)] = text
    return out


def _read(path: Path) -> tuple[str, str]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problem = CatalogProblem(str(path), 1, 1, "", f"cannot read: {exc.strerror or exc}")
        raise CatalogError([problem]) from None
    return raw.decode("utf-8", errors="replace"), hashlib.sha256(raw).hexdigest()


def load(path: str | Path, profile: str | None = None) -> LoadedCatalog:
    """Read and validate a catalog file (and a profile); raises CatalogError listing every problem.

    Relative `ca_file` paths are taken from the catalog's real directory (symlinks followed,
    so the repository's probes.yaml link finds the packaged certificates) and must exist.
    """
    path = Path(path)
    text, digest = _read(path)
    loaded = loads(text, str(path), digest, base_dir=str(path.resolve().parent))
    return apply_profile(loaded, profile) if profile else loaded


def loads(text: str, filename: str = "<catalog>", sha256: str | None = None,
          base_dir: str | None = None) -> LoadedCatalog:
    """Validate catalog text; `base_dir` (if given) anchors and checks relative CA files."""
    catalog, parsed = _validate(Catalog, text, filename, base_dir)
    digest = sha256 or hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return LoadedCatalog(catalog, filename, digest, _sources(parsed, catalog))


# --- shipped files and profiles ------------------------------------------------------------


def _data() -> Path:
    return Path(str(resources.files("probe") / "data"))


def default_catalog_path() -> Path:
    """./probes.yaml when there is one, else the catalog shipped in the package."""
    local = Path("probes.yaml")
    return local if local.is_file() else _data() / "probes.yaml"


def profile_names() -> list[str]:
    """The country profiles shipped in the package (ru, cn, ...)."""
    folder = _data() / "profiles"
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def profile_path(name: str) -> Path:
    """A shipped profile by name, or a profile file given by path."""
    if name in profile_names():
        return _data() / "profiles" / f"{name}.yaml"
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") or "/" in name:
        return candidate
    known = ", ".join(profile_names()) or "none shipped"
    problem = CatalogProblem(str(_data() / "profiles" / f"{name}.yaml"), 1, 1, "",
                             f"no such profile {name!r} (known: {known}; or give a file path)")
    raise CatalogError([problem])


def apply_profile(loaded: LoadedCatalog, name: str) -> LoadedCatalog:
    """Overlay a country profile: add its controls and platforms, apply `only`/`order`/settings.

    A profile adds; it never replaces: a feature the catalog already has is an error, and a
    control whose URL the catalog already lists is kept once.
    """
    path = profile_path(name)
    text, digest = _read(path)
    filename = str(path)
    profile, parsed = _validate(Profile, text, filename, str(path.resolve().parent))
    found: list[CatalogProblem] = []

    def problem(at: tuple[str | int, ...], message: str, at_key: bool = False) -> None:
        from probe import yamlpos

        line, col = yamlpos.locate(at, parsed.positions, at_key)
        found.append(CatalogProblem(filename, line, col, yamlpos.dotted(at), message))

    base = loaded.catalog
    settings = base.settings
    if profile.settings is not None:
        given = profile.settings.model_fields_set
        settings = settings.model_copy(update={k: getattr(profile.settings, k) for k in given})

    sources = dict(loaded.sources)
    profile_sources = _sources(parsed, profile)
    controls = list(base.controls)
    urls = {c.url for c in controls}
    for i, control in enumerate(profile.controls):
        if control.url in urls:
            continue
        urls.add(control.url)
        if (None, None, i) in profile_sources:
            sources[(None, None, len(controls))] = profile_sources[(None, None, i)]
        controls.append(control)

    platforms = dict(base.platforms)
    for pid, extra in profile.platforms.items():
        if pid not in platforms:
            platforms[pid] = extra
        else:
            features = dict(platforms[pid].features)
            for fid, feature in extra.features.items():
                if fid in features:
                    problem(("platforms", pid, "features", fid),
                            f"platform '{pid}' already has a feature '{fid}' (a profile adds "
                            "features, it does not replace them)", at_key=True)
                features[fid] = feature
            platforms[pid] = platforms[pid].model_copy(update={"features": features})
        for key, text_ in profile_sources.items():
            if key[0] == pid:
                sources[key] = text_

    # `only` must name platforms that exist; `order` is a preference, so a platform a user's own
    # catalog does not have is skipped there
    for i, pid in enumerate(profile.only or []):
        if pid not in platforms:
            problem(("only", i), f"no platform '{pid}' in the catalog or the profile "
                    f"(known: {', '.join(platforms)})")
    if found:
        found.sort(key=lambda p: (p.line, p.col))
        raise CatalogError(found)
    if profile.only is not None:
        platforms = {pid: platforms[pid] for pid in profile.only}
    if profile.order:
        first = {pid: platforms[pid] for pid in profile.order if pid in platforms}
        platforms = first | {pid: p for pid, p in platforms.items() if pid not in first}
    if not platforms:
        problem(("only",), "the profile leaves no platform to test")
        raise CatalogError(found)
    catalog = Catalog(version=1, settings=settings, controls=controls, platforms=platforms)
    return LoadedCatalog(catalog, loaded.path, loaded.sha256, sources,
                         profile=path.stem if name in profile_names() else str(path),
                         profile_path=filename, profile_sha256=digest)


# --- JSON Schema ---------------------------------------------------------------------------


def json_schema(kind: Literal["catalog", "profile"] = "catalog") -> dict[str, Any]:
    """A JSON Schema for editors (VS Code YAML, IntelliJ): `probe schema > probes.schema.json`.

    Pydantic describes the mapping forms; the catalog also accepts a target as a bare URL
    string and a feature as a bare list of targets, so those definitions are widened here.
    """
    model = Catalog if kind == "catalog" else Profile
    schema = model.model_json_schema(mode="validation")
    defs = schema.setdefault("$defs", {})
    url = {
        "type": "string",
        "pattern": rf"^({'|'.join(SCHEMES)})://",
        "description": "a target URL: " + ", ".join(f"{s}://" for s in SCHEMES),
    }
    for name in ("Target", "Control"):
        if name in defs:
            defs[f"{name}Mapping"] = defs.pop(name)
            defs[name] = {"anyOf": [url, {"$ref": f"#/$defs/{name}Mapping"}]}
    if "Feature" in defs:
        defs["FeatureMapping"] = defs.pop("Feature")
        defs["Feature"] = {"anyOf": [
            {"type": "array", "items": {"$ref": "#/$defs/Target"}, "minItems": 1},
            {"$ref": "#/$defs/FeatureMapping"},
        ]}

    def fix(node: Any) -> None:
        # pattern-keyed mappings (platform and feature ids) must refuse keys that do not match
        if isinstance(node, dict):
            if "patternProperties" in node:
                node.setdefault("additionalProperties", False)
            for value in node.values():
                fix(value)
        elif isinstance(node, list):
            for value in node:
                fix(value)

    fix(schema)
    for name in ("TargetMapping", "ControlMapping"):
        if name in defs:
            defs[name]["properties"]["url"]["pattern"] = url["pattern"]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "probe catalog" if kind == "catalog" else "probe country profile"
    return schema
