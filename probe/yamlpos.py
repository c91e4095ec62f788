"""YAML with positions and comments: parse to plain values, map validation errors to file:line:col.

Strategy: ruamel.yaml *composes* the text into a node graph (every node keeps its start and end
mark, and duplicate keys are still visible there), and `_Builder` turns that graph into plain
dicts, lists and scalars itself. Doing the construction here, rather than letting ruamel
construct, is what lets one pass report a duplicate key as a located problem and carry on,
refuse alias bombs and recursive aliases, and remember the comment written beside or above each
list item (the `# source: ...` of a catalog target), read straight from the text by line.
Problems that stop parsing (not YAML, tabs, empty) raise CatalogError; problems that do not
(duplicate keys, unsupported tags) are returned with the document, to be reported together with
the validation errors found afterwards.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from probe.errors import CatalogError, CatalogProblem

Path_ = tuple[str | int, ...]
# path -> (line, col), 1-based; a key's own position is at path[:-1] + ("<key>", key)
Positions = dict[Path_, tuple[int, int]]
AllowedKeys = Callable[[Path_], Sequence[str]]
M = TypeVar("M", bound=BaseModel)

MAX_NODES = 2_000_000  # after alias expansion: a 10,000-target catalog has ~50,000
MAX_DEPTH = 64  # a catalog is at most ~8 levels deep
_CORE = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_CORE + t for t in ("str", "int", "float", "bool", "null")}
# The line breaks ruamel's reader counts, so that our line numbers match its marks.
_LINE_BREAK = re.compile("\r\n|\r|\n")


@dataclass
class Parsed:
    """A parsed document, where each node sits, the comment on each list item, soft problems."""

    document: Any
    positions: Positions
    comments: dict[Path_, str] = field(default_factory=dict)
    problems: list[CatalogProblem] = field(default_factory=list)

    def __iter__(self) -> Iterator[Any]:
        """`document, positions = parse(...)`, as callers of the first version wrote."""
        return iter((self.document, self.positions))


def _fatal(filename: str, line: int, col: int, message: str) -> CatalogError:
    return CatalogError([CatalogProblem(filename, line, col, "", message)])


def _tab_problems(lines: list[str], filename: str) -> list[CatalogProblem]:
    """YAML forbids tabs in indentation; name every such line at once, not just the first."""
    found = []
    for lineno, line in enumerate(lines, 1):
        body = line.lstrip(" \t")
        indent = line[: len(line) - len(body)]
        if "\t" in indent and body and not body.startswith("#"):
            col = indent.index("\t") + 1
            message = "tab in indentation (use spaces)"
            found.append(CatalogProblem(filename, lineno, col, "", message))
    return found


def parse(text: str, filename: str) -> Parsed:
    """Parse YAML text into plain values with the position of every node and key."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError

    text = text.removeprefix("\ufeff")  # a byte-order mark: not content, not a column
    if not text.strip():
        raise _fatal(filename, 1, 1, "empty catalog")
    lines = _LINE_BREAK.split(text)
    tabs = _tab_problems(lines, filename)
    if tabs:
        raise CatalogError(tabs)
    yaml = YAML(typ="safe", pure=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a reused anchor is valid YAML: the later one counts
            root = yaml.compose(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        said = [str(part) for part in (exc.context, exc.problem) if part]
        message = " ".join(", ".join(said or ["not valid YAML"]).split())
        raise _fatal(filename, line, col, f"not valid YAML: {message}") from None
    except RecursionError:
        raise _fatal(filename, 1, 1, "not valid YAML: nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - a third-party parser on arbitrary input: refuse, never crash
        message = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise _fatal(filename, 1, 1, f"not valid YAML: {message}") from None
    if root is None:
        raise _fatal(filename, 1, 1, "empty catalog (only comments)")
    if _expanded_size(root) > MAX_NODES:
        raise _fatal(filename, 1, 1, f"too large: more than {MAX_NODES} values after expanding "
                     "aliases")
    builder = _Builder(lines, filename, yaml.constructor)
    document = builder.plain(root, (), 0)
    return Parsed(document, builder.positions, builder.comments, builder.problems)


def _expanded_size(root: Any) -> int:
    """How many values the document has once aliases are expanded, without expanding them.

    Sizes are memoised per node, so a "billion laughs" document costs as much as its text.
    A node reached again while its own size is being computed (a cycle) counts once; the
    builder reports the cycle.
    """
    from ruamel.yaml.nodes import MappingNode, SequenceNode

    sizes: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(root, False)]
    pending: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        if isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, SequenceNode):
            children = list(node.value)
        else:
            sizes[key] = 1
            continue
        if children_done:
            pending.discard(key)
            sizes[key] = min(1 + sum(sizes.get(id(c), 1) for c in children), MAX_NODES + 1)
            continue
        if key in pending:
            continue
        pending.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes and id(c) not in pending)
    return sizes.get(id(root), 1)


class _Builder:
    """Turns composed nodes into plain values, noting positions, comments and soft problems."""

    def __init__(self, lines: list[str], filename: str, constructor: Any) -> None:
        self.lines = lines
        self.filename = filename
        self.constructor = constructor
        self.positions: Positions = {(): (1, 1)}
        self.comments: dict[Path_, str] = {}
        self.problems: list[CatalogProblem] = []
        self.count = 0
        self.active: set[int] = set()  # collection nodes being built: an alias to one is a cycle

    def soft(self, mark: Any, path: Path_, message: str) -> None:
        self.problems.append(
            CatalogProblem(self.filename, mark.line + 1, mark.column + 1, dotted(path), message)
        )

    def plain(self, node: Any, path: Path_, depth: int) -> Any:
        from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

        self.count += 1
        if self.count > MAX_NODES:
            raise _fatal(self.filename, 1, 1, f"too large: more than {MAX_NODES} values "
                         "after expanding aliases")
        if depth > MAX_DEPTH:
            mark = node.start_mark
            raise _fatal(self.filename, mark.line + 1, mark.column + 1, "nested too deeply")
        self.positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if id(node) in self.active:
            self.soft(node.start_mark, path, "an alias refers to a node that contains it")
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self.mapping(node, path, depth)
            if isinstance(node, SequenceNode):
                items = []
                for i, item in enumerate(node.value):
                    items.append(self.plain(item, path + (i,), depth + 1))
                    comment = self.comment(item)
                    if comment:
                        self.comments[path + (i,)] = comment
                return items
        finally:
            self.active.discard(id(node))
        return None

    def scalar(self, node: Any, path: Path_) -> Any:
        tag = str(node.tag)
        if tag == _CORE + "timestamp":
            return str(node.value)  # a catalog has no dates: keep what was written
        if tag not in _SCALAR_TAGS:
            self.soft(node.start_mark, path, f"unsupported tag {tag!r}")
            return None
        try:
            return self.constructor.construct_object(node, deep=True)
        except Exception as exc:  # noqa: BLE001 - a value ruamel cannot construct is a user error
            self.soft(node.start_mark, path, f"bad value {node.value!r}: {exc}")
            return None

    def mapping(self, node: Any, path: Path_, depth: int) -> dict[str, Any]:
        from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

        out: dict[str, Any] = {}
        first: dict[str, Any] = {}
        merged: list[Any] = []
        for key_node, value_node in node.value:
            if str(key_node.tag) == _CORE + "merge":
                sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                for source in sources:
                    if isinstance(source, MappingNode) and id(source) not in self.active:
                        merged.append(source)
                    else:
                        self.soft(key_node.start_mark, path, "'<<' needs a mapping (or a list "
                                  "of mappings) to merge")
                continue
            if not isinstance(key_node, ScalarNode):
                self.soft(key_node.start_mark, path, "a key must be a plain name, not a "
                          "list or mapping")
                continue
            key = str(key_node.value)
            if key in first:
                line = first[key].start_mark.line + 1
                self.soft(key_node.start_mark, path + (key,),
                          f"duplicate key '{key}' (first on line {line})")
                continue
            first[key] = key_node
            self.key(key_node, path, key)
            out[key] = self.plain(value_node, path + (key,), depth + 1)
            if isinstance(value_node, ScalarNode) and value_node.value == "" and \
                    value_node.style is None:
                # `chat:` with nothing after it: the empty value sits on the next line; point
                # at the key the user wrote instead
                self.positions[path + (key,)] = self.positions[path + ("<key>", key)]
        # '<<: *base' fills in keys the mapping does not set itself; earlier sources win
        for source in merged:
            self.active.add(id(source))
            try:
                for key_node, value_node in source.value:
                    key = str(key_node.value)
                    if isinstance(key_node, ScalarNode) and key not in out:
                        self.key(key_node, path, key)
                        out[key] = self.plain(value_node, path + (key,), depth + 1)
            finally:
                self.active.discard(id(source))
        return out

    def key(self, key_node: Any, path: Path_, key: str) -> None:
        self.positions[path + ("<key>", key)] = (
            key_node.start_mark.line + 1,
            key_node.start_mark.column + 1,
        )

    # --- comments ---

    def comment(self, node: Any) -> str | None:
        """The comment beside a list item (same line), else the comment lines right above it."""
        return self.beside(node) or self.above(node.start_mark.line)

    def beside(self, node: Any) -> str | None:
        from ruamel.yaml.nodes import MappingNode, ScalarNode

        ends = []
        if isinstance(node, ScalarNode) or getattr(node, "flow_style", False):
            ends.append(node.end_mark)
        elif isinstance(node, MappingNode):  # block mapping: a comment on any of its scalar lines
            for key_node, value_node in node.value:
                for part in (value_node, key_node):
                    if isinstance(part, ScalarNode):
                        ends.append(part.end_mark)
                        break
        for mark in ends:
            if 0 <= mark.line < len(self.lines):
                # `- [tcp://a:1]  # source: x` closes a flow list before the comment
                rest = self.lines[mark.line][mark.column :].lstrip(" \t]}")
                if rest.startswith("#"):
                    return rest.lstrip("#").strip() or None
        return None

    def above(self, line: int) -> str | None:
        found: list[str] = []
        i = line - 1
        while 0 <= i < len(self.lines):
            stripped = self.lines[i].strip()
            if not stripped.startswith("#"):
                break
            text = stripped.lstrip("#").strip()
            if text:
                found.append(text)
            i -= 1
        return " ".join(reversed(found)) or None


# --- validation errors -> located problems -------------------------------------------------


def dotted(path: Path_) -> str:
    """('platforms', 'wa', 'features', 'calls', 0) -> 'platforms.wa.features.calls[0]'."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, dict) and isinstance(part, str):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


def user_path(loc: Sequence[Any], document: Any) -> tuple[Path_, bool]:
    """The path the user wrote, from a pydantic location; and whether it names a mapping key.

    Pydantic's location includes what a before-validator added: `targets` of a feature written
    as a list, `url` of a target written as a string. Those are dropped, so the path matches
    the file; `[key]` marks an error in a key itself.
    """
    path: Path_ = ()
    node = document
    is_key = False
    for part in loc:
        if part == "[key]":
            is_key = True
            continue
        if isinstance(part, str) and part.startswith(("function-", "list[", "dict[")):
            continue
        if part == "targets" and isinstance(node, list):
            continue
        if part == "url" and isinstance(node, str):
            continue
        path += (part,)
        node = _child(node, part)
    return path, is_key


def locate(path: Path_, positions: Positions, at_key: bool) -> tuple[int, int]:
    """The position of the node (or its key); for a missing node, that of its nearest parent."""
    if at_key and path:
        where = positions.get(path[:-1] + ("<key>", path[-1]))
        if where:
            return where
    probe = path
    while probe:
        where = positions.get(probe)
        if where:
            return where
        probe = probe[:-1]
    return positions.get((), (1, 1))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _no_keys(path: Path_) -> Sequence[str]:
    return ()


def _no_explanation(path: Path_, error: Any) -> str | None:
    return None


def problems(
    exc: ValidationError,
    parsed: Parsed | Positions,
    filename: str,
    allowed_keys: AllowedKeys = _no_keys,
    explain: Callable[[Path_, Any], str | None] = _no_explanation,
) -> list[CatalogProblem]:
    """One problem per validation error, located at the node (or key) it concerns.

    `allowed_keys(path)` lists the keys a mapping at `path` may have (for "did you mean");
    `explain(path, error)` may give a better message than the generic one.
    """
    if not isinstance(parsed, Parsed):
        parsed = Parsed(None, parsed)
    found: list[CatalogProblem] = []
    seen: set[str] = set()
    for error in exc.errors(include_url=False):
        path, is_key = user_path(error["loc"], parsed.document)
        kind = error["type"]
        message = explain(path, error) or _message(path, error, allowed_keys)
        at_key = is_key or kind == "extra_forbidden"
        line, col = locate(path, parsed.positions, at_key)
        problem = CatalogProblem(filename, line, col, dotted(path), message)
        if str(problem) not in seen:
            seen.add(str(problem))
            found.append(problem)
    found.sort(key=lambda p: (p.line, p.col))
    return found


def validate(model: type[M], text: str, filename: str, context: Any = None,
             allowed_keys: AllowedKeys | None = None,
             explain: Callable[[Path_, Any], str | None] = _no_explanation,
             ) -> tuple[M, Parsed]:
    """Parse YAML text and validate it as `model`; CatalogError lists every problem, in order."""
    parsed = parse(text, filename)
    found = list(parsed.problems)
    result = None
    try:
        result = model.model_validate(parsed.document, context=context)
    except ValidationError as exc:
        found += problems(exc, parsed, filename, allowed_keys or model_keys(model), explain)
    except RecursionError:
        found.append(CatalogProblem(filename, 1, 1, "", "nested too deeply"))
    if found or result is None:
        found.sort(key=lambda p: (p.line, p.col))
        raise CatalogError(found or [CatalogProblem(filename, 1, 1, "", "invalid")])
    return result, parsed


def model_keys(model: type[BaseModel]) -> AllowedKeys:
    """Keys for "did you mean": the top-level fields of the model (nested ones are not known)."""

    def allowed(path: Path_) -> Sequence[str]:
        return list(model.model_fields) if not path else ()

    return allowed


def _message(path: Path_, error: Any, allowed_keys: AllowedKeys) -> str:
    kind = error["type"]
    given = error.get("input")
    if kind == "extra_forbidden" and path:
        key = str(path[-1])
        allowed = [k for k in allowed_keys(path[:-1]) if k != key]
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        if close:
            return f"unknown key '{key}', did you mean '{close[0]}'?"
        if allowed:
            return f"unknown key '{key}' (known: {', '.join(allowed)})"
        return f"unknown key '{key}'"
    if kind == "missing":
        return f"required key '{path[-1]}' is missing" if path else "required key missing"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    simple = {
        "string_type": "expected a string",
        "int_type": "expected a whole number",
        "int_parsing": "expected a whole number",
        "int_from_float": "expected a whole number",
        "float_type": "expected a number",
        "bool_type": "expected true or false",
        "bool_parsing": "expected true or false",
        "list_type": "expected a list",
        "dict_type": "expected a mapping",
        "model_type": "expected a mapping",
    }
    if kind in simple:
        return f"{simple[kind]}, got {_short(given)}"
    if kind == "literal_error":
        return f"{message[0].lower()}{message[1:]}, got {_short(given)}"
    if kind.endswith(("_type", "_parsing")):
        return f"{message}, got {_short(given)}"
    return message
