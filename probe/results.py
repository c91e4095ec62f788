"""The result file (`probe.run/1`, CONTRACT.md §3): models, reading and atomic writing."""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from probe.errors import ResultFileError
from probe.observations import Observation

Status = Literal["ok", "degraded", "blocked", "inconclusive"]
SCHEMA = "probe.run/1"


class TargetResult(BaseModel):
    """One target's verdict, with the facts it rests on."""

    platform: str | None
    feature: str | None
    url: str
    name: str | None = None
    status: Status
    reason: str
    detail: str = ""
    phases: dict[str, dict[str, Any]] = {}  # a summary per layer: the representative sample's
    samples: int = 0
    ok_samples: int = 0
    domestic: bool = False  # controls only: a control inside the country
    # the catalog's expect thresholds (max_rtt_ms, min_throughput_bps, max_loss), kept so a saved
    # run can be judged again against another baseline without its catalog
    expect: dict[str, float] | None = None
    observation: Observation = Observation()  # every sample whole, to judge again later


class FeatureResult(BaseModel):
    platform: str
    feature: str
    status: Status
    reason: str
    detail: str = ""
    need: str = "all"
    words: str = ""  # what the verdict means, for a volunteer ("calls connect, then go silent")


class PlatformResult(BaseModel):
    platform: str
    name: str | None = None
    status: Status
    reason: str
    detail: str = ""
    features: dict[str, str] = {}  # feature -> "status reason", for the one-line summary


class NetworkResult(BaseModel):
    status: Status
    reason: str = "ok"
    detail: str = ""
    controls: list[TargetResult] = []
    # Every control failed in the run's first moments, then worked: a network-wide outage
    # until this many ms into the run (failures then are the network's, not a censor's).
    outage_until_ms: float | None = None


class CatalogRef(BaseModel):
    path: str
    sha256: str


class Run(BaseModel):
    """A whole run: the document written by `-o run.json` and `--format json`."""

    schema_: str = SCHEMA
    probe_version: str
    started_at: str
    finished_at: str
    catalog: CatalogRef
    baseline: str | None = None
    interrupted: bool = False
    network: NetworkResult
    targets: list[TargetResult] = []
    features: list[FeatureResult] = []
    platforms: list[PlatformResult] = []
    # flows to settings.reflector, whose differences name a call path's technique
    reflector: list[TargetResult] = []

    def to_json(self, indent: int | None = 2) -> str:
        if indent != 2:
            document = self.model_dump(mode="json", by_alias=True)
            document = {"schema": document.pop("schema_"), **document}
            return json.dumps(document, indent=indent, ensure_ascii=False)
        # The same text as json.dumps(whole document, indent=2), built one list item at a time:
        # the whole document as dicts cost 70 MB more at peak for 10,000 targets (bench/run.py).
        head = self.model_dump(mode="json", by_alias=True, exclude=set(_LISTS))
        text = json.dumps({"schema": head.pop("schema_"), **head}, indent=2, ensure_ascii=False)
        parts = [text[:-2]]  # without the closing "\n}"
        for name in _LISTS:  # the last fields, in field order
            items: list[BaseModel] = getattr(self, name)
            parts.append(f',\n  "{name}": ')
            if not items:
                parts.append("[]")
                continue
            parts.append("[\n    ")
            for i, item in enumerate(items):
                if i:
                    parts.append(",\n    ")
                parts.append(_item_json(item).replace("\n", "\n    "))  # strings' are escaped
            parts.append("\n  ]")
        parts.append("\n}")
        return "".join(parts)


_LISTS = ("targets", "features", "platforms", "reflector")

# Where pydantic's serializer and json.dumps spell a float apart: below 1e-4 it writes 0.00005
# and 1.5e-7 where Python writes 5e-05 and 1.5e-07 (250,000 floats checked: "0.0000" or this
# exponent finds every one, and nothing else among them).
_SHORT_EXPONENT = re.compile(r"\de-\d(?!\d)")


def _item_json(item: BaseModel) -> str:
    """json.dumps(item.model_dump(mode="json", by_alias=True), indent=2, ensure_ascii=False),
    written by pydantic's serializer: a quarter of the time (0.1 s, not 0.4 s, for 10,000
    targets, and `probe run -o x.json -f json` renders twice). Its text is the same: strings
    are escaped alike, keys in the same order, floats the same digits; an item where a float
    could be spelled apart (see _SHORT_EXPONENT: perhaps only a string looking like one), or
    that the serializer refuses (a lone surrogate), is written by json.dumps. One difference
    is left: a NaN or an infinity among the facts (no layer makes one) reads null, which
    json.dumps would write as NaN, not JSON."""
    try:
        text = item.model_dump_json(indent=2, by_alias=True)
    except ValueError:  # pydantic_core.PydanticSerializationError
        text = ""
    if not text or "0.0000" in text or ("e-" in text and _SHORT_EXPONENT.search(text)):
        text = json.dumps(item.model_dump(mode="json", by_alias=True), indent=2,
                          ensure_ascii=False)
    return text


# How targets match across runs: platform + feature + url (controls: None, None, url).
Key = tuple[str | None, str | None, str]


def target_key(target: TargetResult) -> Key:
    return (target.platform, target.feature, target.url)


def index_targets(run: Run) -> dict[Key, TargetResult]:
    """A run's controls and targets by key; a url listed twice in a feature matches its first."""
    index: dict[Key, TargetResult] = {}
    for t in [*run.network.controls, *run.targets]:
        index.setdefault(target_key(t), t)  # controls have no platform: never a target's key
    return index


def read_run(path: str | Path) -> Run:
    """Read a saved run (`.json`, or `.jsonl` records); raises ResultFileError with one line
    for anything that is not one (binary, another program's JSON, a damaged or cut file)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ResultFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ResultFileError(f"{path}: not a result file (not UTF-8 text)") from None
    try:
        if path.suffix == ".jsonl" or (text[:1] == "{" and text.lstrip("{ ").startswith(
                '"record"')):
            return parse_jsonl(text, str(path))
        document = _json(text)
        if not isinstance(document, dict) or document.get("schema") != SCHEMA:
            raise ResultFileError(f"{path}: not a {SCHEMA} document")
        document["schema_"] = document.pop("schema")
        return Run.model_validate(document)
    except ResultFileError:
        raise
    except (ValueError, ValidationError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ResultFileError(f"{path}: not a valid result file: {first}") from None


def _json(text: str) -> Any:
    """JSON as the probe writes it: no NaN or Infinity (they would poison every comparison),
    spelled so or as a number too large for a float (1e999)."""
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not a number a result file holds")

    def finite(number: str) -> float:
        value = float(number)
        return value if math.isfinite(value) else refuse(number)

    return json.loads(text, parse_constant=refuse, parse_float=finite)


# --- JSONL: a record per line; target lines as the targets finish ------------------------------
#
# {"record": "run", "schema": "probe.run/1", "probe_version": ..., "started_at": ..., ...}
# {...one target, the same object as an element of the JSON document's `targets`...}
# {"record": "network", "status": ..., "reason": ..., "detail": ..., "controls": [...]}
# {"record": "reflector", ...one flow to settings.reflector, a target's shape...}
# {"record": "feature", ...one element of `features`...}
# {"record": "platform", ...one element of `platforms`...}
# {"record": "end", "finished_at": ..., "interrupted": false, "targets": N}
#
# Target lines keep the shape they always had (no "record" key). The end record is written
# last, also when a signal stops the run: a file without it was cut (kill -9, a full disk).

_HEAD = ("probe_version", "started_at", "catalog", "baseline")


def jsonl_head(run: Run) -> str:
    head = run.model_dump(mode="json", include=set(_HEAD))
    return json.dumps({"record": "run", "schema": SCHEMA, **head}, ensure_ascii=False)


def jsonl_target(target: TargetResult) -> str:
    return target.model_dump_json()


def jsonl_tail(run: Run) -> list[str]:
    """The records after the targets: the network, features, platforms, and the end."""
    def record(kind: str, model: BaseModel) -> str:
        return json.dumps({"record": kind, **model.model_dump(mode="json")}, ensure_ascii=False)

    return [record("network", run.network), *(record("reflector", t) for t in run.reflector),
            *(record("feature", f) for f in run.features),
            *(record("platform", p) for p in run.platforms),
            json.dumps({"record": "end", "finished_at": run.finished_at,
                        "interrupted": run.interrupted, "targets": len(run.targets)})]


def jsonl_lines(run: Run) -> list[str]:
    """A whole run as JSONL records (what `-f jsonl` prints)."""
    return [jsonl_head(run), *(jsonl_target(t) for t in run.targets), *jsonl_tail(run)]


def parse_jsonl(text: str, path: str) -> Run:
    """A run from JSONL records; a file of target lines only (an older version's) or one cut
    before its end record reads too, the cut one marked interrupted."""
    head: dict[str, Any] = {}
    targets: list[TargetResult] = []
    network: NetworkResult | None = None
    features: list[FeatureResult] = []
    platforms: list[PlatformResult] = []
    reflector: list[TargetResult] = []
    end: dict[str, Any] | None = None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("no records: the file is empty")
    for number, line in enumerate(lines, 1):
        try:
            item = _json(line)
        except json.JSONDecodeError:  # not a refused NaN: that is no tear
            if number == len(lines) and end is None and number > 1:
                break  # a last line torn by a writer that died: the file was cut there
            raise
        if not isinstance(item, dict):
            raise ValueError(f"line {number} is not a JSON object")
        kind = item.pop("record", None)
        if kind is None:
            targets.append(TargetResult.model_validate(item))
        elif kind == "run":
            head = item
        elif kind == "network":
            network = NetworkResult.model_validate(item)
        elif kind == "feature":
            features.append(FeatureResult.model_validate(item))
        elif kind == "platform":
            platforms.append(PlatformResult.model_validate(item))
        elif kind == "reflector":
            reflector.append(TargetResult.model_validate(item))
        elif kind == "end":
            end = item
    complete = end is not None
    return Run(
        probe_version=str(head.get("probe_version", "?")),
        started_at=str(head.get("started_at", "")),
        finished_at=str((end or {}).get("finished_at", "")),
        catalog=CatalogRef.model_validate(head.get("catalog") or {"path": path, "sha256": ""}),
        baseline=head.get("baseline"),
        interrupted=bool((end or {}).get("interrupted")) or (bool(head) and not complete),
        network=network or NetworkResult(status="ok", detail="not recorded"),
        targets=targets, features=features, platforms=platforms, reflector=reflector,
    )


def write_atomic(path: str | Path, text: str) -> None:
    """Write a file whole or not at all: a temporary file in the same folder, then rename.

    The temporary file's name carries the writer's process id, so that a later write to the
    same path removes what a killed writer (kill -9, power loss) left behind. The file gets
    the mode any new file of the user's gets (the umask), not the temporary file's 0600.
    """
    path = Path(path)
    _sweep_orphans(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                               dir=path.parent or ".")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sweep_orphans(path: Path) -> None:
    """Remove temporary files of earlier writes to `path` whose writer no longer runs."""
    prefix = f".{path.name}."
    for orphan in (path.parent or Path(".")).glob(f"{glob.escape(prefix)}*.tmp"):
        pid = orphan.name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            orphan.unlink(missing_ok=True)
        except OSError:  # it exists (another user's): not ours to touch
            pass


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


class JsonlWriter:
    """A JSONL file written a whole line at a time: a line is whole or absent, never torn.

    A write the disk cannot take (ENOSPC, EIO) is undone to the last whole line and ends the
    writing; `error` says why, and the run goes on (its report still reaches stdout).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.error: str | None = None
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self._size = 0

    def write(self, line: str) -> None:
        if self._fd is None or self.error is not None:
            return
        data = (line + "\n").encode("utf-8")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            self._size += len(data)
        except OSError as exc:
            self.error = f"{self.path}: {exc.strerror or exc}"
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)  # take back a partly written line

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
