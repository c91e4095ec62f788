"""What a catalog would test, for `probe targets` and `probe validate`: tree, JSON, summary."""

from __future__ import annotations

import io
import json
import shutil
from typing import Any, Literal

from probe.catalog import LoadedCatalog, Target

Format = Literal["tree", "json"]


def rows(loaded: LoadedCatalog) -> list[dict[str, Any]]:
    """One row per target, controls first, in the order a run measures them."""
    out: list[dict[str, Any]] = []
    for i, control in enumerate(loaded.catalog.controls):
        out.append(_row(loaded, None, None, None, i, control) | {"domestic": control.domestic})
    for pid, platform in loaded.catalog.platforms.items():
        for fid, feature in platform.features.items():
            for i, target in enumerate(feature.targets):
                out.append(_row(loaded, pid, fid, feature.need, i, target) | {"domestic": False})
    return out


def _row(loaded: LoadedCatalog, pid: str | None, fid: str | None, need: str | None, index: int,
         target: Target) -> dict[str, Any]:
    return {
        "platform": pid,
        "feature": fid,
        "need": need,
        "url": target.url,
        "name": target.name,
        "source": loaded.source_of(pid, fid, index),
    }


def render_targets(loaded: LoadedCatalog, fmt: str = "tree", width: int | None = None) -> str:
    """The catalog as text: "tree" (platform -> feature (need) -> target, source) or "json".

    The tree wraps at `width` columns, by default the terminal's (120 when not a terminal).
    """
    if fmt == "json":
        return json.dumps(rows(loaded), indent=2, ensure_ascii=False) + "\n"
    if fmt != "tree":
        raise ValueError(f"unknown format {fmt!r} (tree or json)")
    return _tree(loaded, width or shutil.get_terminal_size((120, 24)).columns)


def _label(url: str, name: str | None, source: str | None, extra: str = "") -> Any:
    from rich.text import Text

    # Text, not markup: an IPv6 literal's brackets would otherwise be read as style tags
    label = Text(url, style="bold")
    if name:
        label.append(f"  {name}")
    if extra:
        label.append(f"  ({extra})", style="yellow")
    if source:
        label.append(f"  # {source}", style="dim")
    return label


def _tree(loaded: LoadedCatalog, width: int) -> str:
    from rich.console import Console
    from rich.text import Text
    from rich.tree import Tree

    title = Text(f"{loaded.path}", style="bold")
    if loaded.profile:
        title.append(f"  + profile {loaded.profile}")
    root = Tree(title)
    if loaded.catalog.controls:
        branch = root.add(Text("controls", style="cyan"))
        for i, c in enumerate(loaded.catalog.controls):
            branch.add(_label(c.url, c.name, loaded.source_of(None, None, i),
                              "domestic" if c.domestic else ""))
    for pid, platform in loaded.catalog.platforms.items():
        head = Text(platform.name or pid, style="bold cyan")
        if platform.name:
            head.append(f" ({pid})")
        branch = root.add(head)
        for fid, feature in platform.features.items():
            leaf = branch.add(Text(f"{fid} (need {feature.need})", style="green"))
            for i, t in enumerate(feature.targets):
                leaf.add(_label(t.url, t.name, loaded.source_of(pid, fid, i)))
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, highlight=False,
                      emoji=False, soft_wrap=False)
    console.print(root)
    return buffer.getvalue()


def summary(loaded: LoadedCatalog) -> str:
    """One line for `probe validate`: what a run of this catalog would measure."""
    platforms = loaded.catalog.platforms
    features = sum(len(p.features) for p in platforms.values())
    targets = sum(len(f.targets) for p in platforms.values() for f in p.features.values())
    controls = loaded.catalog.controls
    domestic = sum(1 for c in controls if c.domestic)
    profile = f" with profile {loaded.profile}" if loaded.profile else ""
    return (f"{loaded.path}{profile}: ok - {len(platforms)} platforms, {features} features, "
            f"{targets} targets, {len(controls)} controls ({domestic} domestic)\n")
