"""The result file (`probe.run/1`, CONTRACT.md §3): models, reading and atomic writing."""

from __future__ import annotations

import glob
import json
import os
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
                one = json.dumps(item.model_dump(mode="json", by_alias=True), indent=2,
                                 ensure_ascii=False)
                parts.append(one.replace("\n", "\n    "))  # newlines in strings are escaped
            parts.append("\n  ]")
        parts.append("\n}")
        return "".join(parts)


_LISTS = ("targets", "features", "platforms")


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
    """Read a saved run (`.json`, or `.jsonl` of target lines); raises ResultFileError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ResultFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        if path.suffix == ".jsonl":
            targets = [TargetResult.model_validate_json(line) for line in text.splitlines() if line]
            return Run(
                probe_version="?", started_at="", finished_at="",
                catalog=CatalogRef(path=str(path), sha256=""),
                network=NetworkResult(status="ok"), targets=targets,
            )
        document = json.loads(text)
        if document.get("schema") != SCHEMA:
            raise ResultFileError(f"{path}: not a {SCHEMA} document")
        document["schema_"] = document.pop("schema")
        return Run.model_validate(document)
    except (ValueError, ValidationError) as exc:
        first = str(exc).splitlines()[0]
        raise ResultFileError(f"{path}: not a valid result file: {first}") from None


def write_atomic(path: str | Path, text: str) -> None:
    """Write a file whole or not at all: a temporary file in the same folder, then rename.

    The temporary file's name carries the writer's process id, so that a later write to the
    same path removes what a killed writer (kill -9, power loss) left behind.
    """
    path = Path(path)
    _sweep_orphans(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                               dir=path.parent or ".")
    try:
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
