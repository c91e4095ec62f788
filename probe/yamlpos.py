"""YAML with positions: parse to plain values, and map validation errors to file:line:col."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from probe.errors import CatalogError, CatalogProblem

Path_ = tuple[str | int, ...]
Positions = dict[Path_, tuple[int, int]]  # path -> (line, col), 1-based


def parse(text: str, filename: str) -> tuple[Any, Positions]:
    """Parse YAML text into plain dicts/lists/scalars, with the position of every node and key."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    if not text.strip():
        raise CatalogError([CatalogProblem(filename, 1, 1, "", "empty catalog")])
    for lineno, line in enumerate(text.splitlines(), 1):
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        if "\t" in indent:
            col = indent.index("\t") + 1
            problem = CatalogProblem(filename, lineno, col, "", "tab in indentation (use spaces)")
            raise CatalogError([problem])
    yaml = YAML(typ="rt")
    try:
        node = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = " ".join(str(exc.problem or exc.context or "not valid YAML").split())
        raise CatalogError([CatalogProblem(filename, line, col, "", message)]) from None
    except YAMLError as exc:
        raise CatalogError([CatalogProblem(filename, 1, 1, "", f"not valid YAML: {exc}")]) from None
    if node is None:
        raise CatalogError([CatalogProblem(filename, 1, 1, "", "empty catalog")])
    positions: Positions = {(): (1, 1)}
    return _plain(node, (), positions), positions


def _plain(node: Any, path: Path_, positions: Positions) -> Any:
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(node, CommentedMap):
        out = {}
        for key, value in node.items():
            try:
                kline, kcol, vline, vcol = node.lc.data[key]
            except (KeyError, TypeError, ValueError):
                kline, kcol, vline, vcol = positions.get(path, (0, 0)) * 2
            skey = str(key)
            positions[path + (skey,)] = (vline + 1, vcol + 1)
            positions[path + ("<key>", skey)] = (kline + 1, kcol + 1)
            out[skey] = _plain(value, path + (skey,), positions)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for i, value in enumerate(node):
            try:
                line, col = node.lc.data[i]
            except (KeyError, IndexError, TypeError):
                line, col = (p - 1 for p in positions.get(path, (1, 1)))
            positions[path + (i,)] = (line + 1, col + 1)
            items.append(_plain(value, path + (i,), positions))
        return items
    if hasattr(node, "__float__") and type(node).__name__ == "ScalarFloat":
        return float(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    return node


def _dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _user_path(loc: tuple[Any, ...], positions: Positions) -> Path_:
    """Drop the parts of a pydantic location that the user did not write (list -> targets)."""
    path: Path_ = ()
    for part in loc:
        candidate = path + (part,)
        if candidate in positions or isinstance(part, int) and path + (part,) in positions:
            path = candidate
        elif part == "targets" or str(part).startswith(("function-", "list[", "dict[")):
            continue
        else:
            path = candidate  # a missing key: keep it for the message, position of the parent
    return path


def problems(exc: ValidationError, positions: Positions, filename: str) -> list[CatalogProblem]:
    """One problem per validation error, located at the node it concerns."""
    found: list[CatalogProblem] = []
    seen: set[str] = set()
    for error in exc.errors(include_url=False):
        path = _user_path(tuple(error["loc"]), positions)
        message = _message(error)
        if error["type"] == "extra_forbidden":
            where = positions.get(path[:-1] + ("<key>", str(path[-1]))) if path else None
        else:
            where = None
        probe_path = path
        while where is None:
            where = positions.get(probe_path)
            if where is None and error["type"] == "missing" and probe_path:
                probe_path = probe_path[:-1]
                continue
            if where is None:
                if not probe_path:
                    where = (1, 1)
                    break
                probe_path = probe_path[:-1]
        text = str(CatalogProblem(filename, where[0], where[1], _dotted(path), message))
        if text not in seen:
            seen.add(text)
            found.append(CatalogProblem(filename, where[0], where[1], _dotted(path), message))
    found.sort(key=lambda p: (p.line, p.col))
    return found


def _message(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required field missing"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    if kind == "literal_error" or kind.endswith("_type") or kind.endswith("_parsing"):
        message += f" (got {error.get('input')!r})"
    return message
