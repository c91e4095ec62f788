"""The catalog (probes.yaml): typed models, and loading with file:line:col errors.

Strategy: ruamel.yaml parses the file keeping each node's position; the document is validated
by pydantic as a whole, and every validation error is mapped back to the position of the node
(or key) it names. So one pass reports every problem, each where the user can find it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from probe.errors import CatalogError, CatalogProblem

SCHEMES = ("dns", "tcp", "tls", "https", "quic", "stun", "turn")
DEFAULT_PORTS = {"tls": 443, "https": 443, "quic": 443, "stun": 3478, "turn": 3478}
PLATFORM_ID = re.compile(r"^[a-z0-9_-]+$")


# --- units ---------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)\s*$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(bit/s|kbit/s|Mbit/s|Gbit/s)\s*$")
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def parse_duration(value: Any) -> float:
    """'5s', '300ms', '2m' or a bare number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"bad duration {value!r} (use e.g. 300ms, 5s, 2m)")
        seconds = float(m[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m[2]]
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


def parse_rate(value: Any) -> float:
    """'1Mbit/s', '128kbit/s' or a bare number of bits per second -> bits per second."""
    if isinstance(value, bool):
        raise ValueError(f"not a rate: {value!r}")
    if isinstance(value, int | float):
        rate = float(value)
    else:
        m = _RATE.match(str(value))
        if not m:
            raise ValueError(f"bad rate {value!r} (use e.g. 128kbit/s, 1Mbit/s)")
        scale = {"bit/s": 1.0, "kbit/s": 1e3, "Mbit/s": 1e6, "Gbit/s": 1e9}[m[2]]
        rate = float(m[1]) * scale
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {value!r}")
    return rate


def parse_percent(value: Any) -> float:
    """'10%' or a fraction between 0 and 1 -> a fraction."""
    if isinstance(value, bool):
        raise ValueError(f"not a percentage: {value!r}")
    if isinstance(value, int | float):
        fraction = float(value)
    else:
        m = _PERCENT.match(str(value))
        if not m:
            raise ValueError(f"bad percentage {value!r} (use e.g. 10%)")
        fraction = float(m[1]) / 100
    if not 0 <= fraction <= 1:
        raise ValueError(f"percentage must be between 0% and 100%, got {value!r}")
    return fraction


Duration = Annotated[float, BeforeValidator(parse_duration)]
Rate = Annotated[float, BeforeValidator(parse_rate)]
Percent = Annotated[float, BeforeValidator(parse_percent)]


# --- models --------------------------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Expect(Strict):
    """Thresholds for 'degraded' when no baseline says otherwise (seconds, bit/s, fraction)."""

    max_rtt: Duration | None = None
    min_throughput: Rate | None = None
    max_loss: Percent | None = None


class Settings(Strict):
    timeout: Duration = 5.0
    attempts: int = Field(3, ge=1, le=1000)
    concurrency: int = Field(64, ge=1, le=100_000)
    resolver: str = "system"
    doh: str | None = None
    ca_file: str | None = None
    control_sni: str | None = None

    @field_validator("resolver")
    @classmethod
    def _resolver(cls, value: str) -> str:
        if value != "system":
            split_host_port(value, 53)
        return value

    @field_validator("doh")
    @classmethod
    def _doh(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("https://"):
            raise ValueError(f"doh must be an https:// URL, got {value!r}")
        return value


@dataclass(frozen=True)
class Endpoint:
    """What a target URL names: scheme, host, port, path and query options."""

    scheme: str
    host: str
    port: int | None
    path: str
    query: dict[str, str]

    @property
    def is_ip(self) -> bool:
        return is_ip_literal(self.host)


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """'1.2.3.4', '1.2.3.4:5353', '[::1]:53' or '::1' -> (host, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
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
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if "://" not in url:
        raise ValueError(f"not a target URL: {url!r} (expected scheme://host[:port])")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {parts.scheme!r} (one of {', '.join(SCHEMES)})")
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"port out of range in {url!r}") from None
    if port == 0:
        raise ValueError(f"port out of range in {url!r}")
    if scheme == "dns" and port is not None:
        raise ValueError("dns:// targets take no port")
    if scheme == "tcp" and port is None:
        raise ValueError(f"tcp:// targets need a port: {url!r}")
    if port is None:
        port = DEFAULT_PORTS.get(scheme)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if scheme == "turn":
        transport = query.setdefault("transport", "udp")
        if transport not in ("udp", "tcp"):
            raise ValueError(f"turn transport must be udp or tcp, got {transport!r}")
        unknown = set(query) - {"transport"}
    else:
        unknown = set(query)
    if unknown:
        raise ValueError(f"unknown URL option(s) {', '.join(sorted(unknown))}")
    if scheme != "https" and parts.path not in ("", "/"):
        raise ValueError(f"{scheme}:// targets take no path")
    return Endpoint(scheme, host.lower(), port, parts.path or "/", query)


class Target(Strict):
    """One endpoint to test; a bare URL string in the catalog is `{url: ...}`."""

    url: str
    name: str | None = None
    sni: str | None = None
    address: str | None = None
    ca_file: str | None = None
    alpn: list[str] | None = None
    timeout: Duration | None = None
    attempts: int | None = Field(None, ge=1, le=1000)
    expect: Expect = Expect()
    sustain: Duration | None = None

    _endpoint: Endpoint = PrivateAttr()

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
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not is_ip_literal(value):
            raise ValueError(f"address must be an IP address, got {value!r}")
        return value

    @model_validator(mode="after")
    def _options_fit_scheme(self) -> Target:
        self._endpoint = parse_endpoint(self.url)
        scheme = self._endpoint.scheme
        if self.sustain is not None and scheme != "stun":
            raise ValueError("sustain applies to stun:// targets only")
        if self.sni is not None and scheme not in ("tls", "https", "quic"):
            raise ValueError(f"sni does not apply to {scheme}:// targets")
        return self

    @property
    def endpoint(self) -> Endpoint:
        return self._endpoint


class Control(Target):
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
    features: dict[str, Feature] = Field(min_length=1)


class Catalog(Strict):
    version: Literal[1] = 1
    settings: Settings = Settings()
    controls: list[Control] = []
    platforms: dict[str, Platform] = Field(min_length=1)

    @field_validator("platforms")
    @classmethod
    def _ids(cls, value: dict[str, Platform]) -> dict[str, Platform]:
        for pid in value:
            if not PLATFORM_ID.match(pid):
                raise ValueError(f"platform id {pid!r} must match [a-z0-9_-]+")
        return value


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

    @property
    def endpoint(self) -> Endpoint:
        return self.target.endpoint

    @property
    def is_control(self) -> bool:
        return self.platform is None


@dataclass(frozen=True)
class LoadedCatalog:
    """A validated catalog with where it came from."""

    catalog: Catalog
    path: str
    sha256: str

    @property
    def settings(self) -> Settings:
        return self.catalog.settings

    def jobs(self, only: set[str] | None = None) -> Iterator[Job]:
        """Controls first, then every target of every (selected) platform, in file order."""
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
            )

        for c in self.catalog.controls:
            yield job(None, None, c)
        for pid, platform in self.catalog.platforms.items():
            if only and pid not in only:
                continue
            for fid, feature in platform.features.items():
                for t in feature.targets:
                    yield job(pid, fid, t)


# --- loading -------------------------------------------------------------------------------


def load(path: str | Path) -> LoadedCatalog:
    """Read and validate a catalog file; raises CatalogError listing every problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problem = CatalogProblem(str(path), 1, 1, "", f"cannot read: {exc.strerror or exc}")
        raise CatalogError([problem]) from None
    return loads(raw.decode("utf-8", errors="replace"), str(path), hashlib.sha256(raw).hexdigest())


def loads(text: str, filename: str = "<catalog>", sha256: str | None = None) -> LoadedCatalog:
    from probe import yamlpos

    document, positions = yamlpos.parse(text, filename)
    try:
        catalog = Catalog.model_validate(document)
    except ValidationError as exc:
        raise CatalogError(yamlpos.problems(exc, positions, filename)) from None
    digest = sha256 or hashlib.sha256(text.encode()).hexdigest()
    return LoadedCatalog(catalog, filename, digest)
