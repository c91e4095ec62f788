"""YAML with positions and comments: parse to plain values, map validation errors to file:line:col.

Strategy: libyaml (PyYAML's C parser) scans and parses the text into events, and `_Composer`
turns them into a node graph in which every node keeps its start and end mark and duplicate
keys are still visible. `_Builder` turns that graph into plain dicts, lists and scalars itself,
resolving plain scalars as YAML 1.2 does (`yes` and `on` stay strings). Doing the construction
here is what lets one pass report a duplicate key as a located problem and carry on, refuse
alias bombs, recursive aliases and hostile nesting, and remember the comment written beside or
above each list item (the `# source: ...` of a catalog target): the parser drops comments, so
they are read straight from the lines around each item's marks.
When libyaml refuses a text, PyYAML's pure-Python parser reads it again for its clearer words
(`expected ',' or ']', but got '<stream end>'`), and its verdict stands; it also stands in
where libyaml is missing. Parsing 10,000 targets so takes about 0.06 s here, not 0.6 s.
Problems that stop parsing (not YAML, tabs, empty) raise CatalogError; problems that do not
(duplicate keys, unsupported tags) are returned with the document, to be reported together with
the validation errors found afterwards.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from yaml.composer import Composer, ComposerError
from yaml.events import (
    AliasEvent,
    MappingEndEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader, ReaderError
from yaml.scanner import Scanner

from probe.errors import CatalogError, CatalogProblem

Path_ = tuple[str | int, ...]
# path -> (line, col), 1-based; a key's own position is at path[:-1] + ("<key>", key)
Positions = dict[Path_, tuple[int, int]]
AllowedKeys = Callable[[Path_], Sequence[str]]
M = TypeVar("M", bound=BaseModel)

MAX_NODES = 2_000_000  # after alias expansion: a 10,000-target catalog has ~50,000
MAX_DEPTH = 64  # a catalog is at most ~8 levels deep
_CORE = "tag:yaml.org,2002:"
_STR = _CORE + "str"
_MERGE = _CORE + "merge"
_PLAIN = "?plain"  # the tag _Composer gives an untagged plain scalar: _Builder resolves it
# The line breaks YAML (libyaml and PyYAML alike) counts, so that our line numbers match marks.
_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
_NOT_NEWLINE = re.compile("[\r\x85\u2028\u2029]")  # none of these: str.split("\n") will do


@dataclass
class Parsed:
    """A parsed document, where each node sits, the comment on each list item, soft problems."""

    document: Any
    positions: Positions
    comments: dict[Path_, str] = field(default_factory=dict)
    problems: list[CatalogProblem] = field(default_factory=list)


def _fatal(filename: str, line: int, col: int, message: str) -> CatalogError:
    return CatalogError([CatalogProblem(filename, line, col, "", message)])


def _lines(text: str) -> list[str]:
    """The text's lines as YAML counts them (so that a mark's line indexes this list)."""
    return _LINE_BREAK.split(text) if _NOT_NEWLINE.search(text) else text.split("\n")


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


# --- scalars: YAML 1.2 core schema ---------------------------------------------------------

# What a plain scalar means is decided here, not by PyYAML's resolver, whose YAML 1.1 rules
# would turn `on`, `no` and `1:30` into booleans and numbers. These are the 1.2 rules the
# loader has always used (underscores allowed in numbers, `0o17` octal, `010` decimal).
_NULLS = frozenset(("", "~", "null", "Null", "NULL"))
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False,
          "FALSE": False}
_NUMBER_START = frozenset("-+.0123456789")
_FLOAT = re.compile(r"""[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                              |[0-9][0-9_]*[eE][-+]?[0-9]+
                              |\.[0-9_]+(?:[eE][-+][0-9]+)?
                              |\.(?:inf|Inf|INF))
                        |\.(?:nan|NaN|NAN)""", re.VERBOSE)
_INT = re.compile(r"[-+]?(?:0b[01_]+|0o[0-7_]+|0x[0-9a-fA-F_]+|[0-9_]+)")
_BASES = {"0b": 2, "0o": 8, "0x": 16}
_TRUTH = {"true": True, "yes": True, "on": True, "y": True,
          "false": False, "no": False, "off": False, "n": False}


def _signed(text: str) -> tuple[int, str]:
    digits = text.replace("_", "")
    if digits.startswith(("-", "+")):
        return (-1 if digits[0] == "-" else 1), digits[1:]
    return 1, digits


def _to_int(text: str) -> int:
    sign, digits = _signed(text)
    base = _BASES.get(digits[:2], 10)
    try:
        return sign * int(digits[2:] if base != 10 else digits, base)
    except ValueError:
        raise ValueError("not a whole number") from None


def _to_float(text: str) -> float:
    sign, digits = _signed(text.lower())
    if digits == ".inf":
        return sign * math.inf
    if digits == ".nan":
        return math.nan
    try:
        return sign * float(digits)
    except ValueError:
        raise ValueError("not a number") from None


def _to_bool(text: str) -> bool:
    truth = _TRUTH.get(text.lower())
    if truth is None:
        raise ValueError("not true or false")
    return truth


def _resolve_plain(text: str) -> Any:
    """An untagged plain scalar as YAML 1.2 reads it: null, a boolean, a number or a string."""
    if text in _NULLS:
        return None
    first = text[0]
    if first in "tTfF":
        return _BOOLS.get(text, text)
    if first in _NUMBER_START:
        if _FLOAT.fullmatch(text):
            return _to_float(text)
        if _INT.fullmatch(text):
            return _to_int(text)
    return text


def _keep(text: str) -> str:
    return text


def _nothing(text: str) -> None:
    return None


# an explicitly tagged scalar (`!!int "5"`); `!!timestamp` is kept as written: no dates here
_EXPLICIT: dict[str, Callable[[str], Any]] = {
    _STR: _keep, _CORE + "timestamp": _keep, _CORE + "null": _nothing,
    _CORE + "bool": _to_bool, _CORE + "int": _to_int, _CORE + "float": _to_float,
}


# --- composing -----------------------------------------------------------------------------


class _TooDeep(Exception):
    def __init__(self, mark: Any) -> None:
        super().__init__("nested too deeply")
        self.mark = mark


class _Composer(Composer):
    """Builds the node graph from parser events: PyYAML's document handling, our own nodes.

    Each event is fetched once and turned into its node here (PyYAML's composer asks the
    parser three times per node and consults a resolver), with three differences that matter:
    depth is bounded as it goes, so hostile nesting is refused before it costs anything (and
    recursion stays far from Python's limit; libyaml's C composer would crash the process on
    it); a reused anchor is valid YAML, the later one counting for the aliases after it, where
    PyYAML refuses the document; untagged scalars are tagged `_PLAIN` or `_STR` and resolved
    by _Builder, not by PyYAML's YAML 1.1 rules.
    """

    depth = 0
    aliases = 0  # no alias at all: no need to measure the expanded size
    get_event: Callable[[], Any]  # from the parser it is mixed with

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        return self._node(self.get_event())

    def _node(self, event: Any) -> Node:
        kind = type(event)
        if kind is AliasEvent:
            self.aliases += 1
            if event.anchor not in self.anchors:
                raise ComposerError(None, None, f"found undefined alias {event.anchor!r}",
                                    event.start_mark)
            return self.anchors[event.anchor]
        if self.depth > MAX_DEPTH:
            raise _TooDeep(event.start_mark)
        tag = event.tag
        node: Node
        if kind is ScalarEvent:
            if tag is None or tag == "!":
                tag = _PLAIN if event.implicit[0] else _STR
            node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
            if event.anchor is not None:
                self.anchors[event.anchor] = node
            return node
        items: list[Any] = []
        if kind is SequenceStartEvent:
            node = SequenceNode(tag, items, event.start_mark, None, event.flow_style)
        else:
            node = MappingNode(tag, items, event.start_mark, None, event.flow_style)
        if event.anchor is not None:
            self.anchors[event.anchor] = node  # before the children: an alias in them is a cycle
        self.depth += 1
        get = self.get_event
        child = get()
        if kind is SequenceStartEvent:
            while type(child) is not SequenceEndEvent:
                items.append(self._node(child))
                child = get()
        else:
            while type(child) is not MappingEndEvent:
                items.append((self._node(child), self._node(get())))
                child = get()
        self.depth -= 1
        node.end_mark = child.end_mark
        return node


class _PyLoader(Reader, Scanner, Parser, _Composer):
    """PyYAML's own pure-Python reader, scanner and parser."""

    def __init__(self, text: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        _Composer.__init__(self)


_CLoader: Callable[[str], _Composer] | None = None
if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _LibyamlLoader(_Composer, CParser):
        """libyaml's scanner and parser (C), our composer over its events."""

        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            _Composer.__init__(self)

    _CLoader = _LibyamlLoader


def _line_col(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of a character index, counting breaks as YAML does."""
    before = _LINE_BREAK.split(text[:index])
    return len(before), len(before[-1]) + 1


def _compose(text: str, filename: str) -> tuple[Node | None, int]:
    """The node graph of a one-document text, and how many aliases it has; or CatalogError."""
    loaders: list[Callable[[str], _Composer]] = [_PyLoader]
    if _CLoader is not None:
        loaders.insert(0, _CLoader)
    for loader_class in loaders:
        try:
            loader = loader_class(text)  # PyYAML's reader checks every character here
            return loader.get_single_node(), loader.aliases
        except _TooDeep as exc:
            raise _fatal(filename, exc.mark.line + 1, exc.mark.column + 1,
                         "nested too deeply") from None
        except Exception as exc:  # noqa: BLE001 - a parser on arbitrary input: refuse, never crash
            if loader_class is not _PyLoader:
                continue  # libyaml refused it: PyYAML's own parser says why in better words
            raise _refusal(exc, text, filename) from None
    raise AssertionError("the last loader refuses or returns")  # pragma: no cover


def _refusal(exc: Exception, text: str, filename: str) -> CatalogError:
    """A parser's exception as one located "not valid YAML" problem."""
    line, col = 1, 1
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        if mark:
            line, col = mark.line + 1, mark.column + 1
        said = [str(part) for part in (exc.context, exc.problem) if part]
        message = ", ".join(said or ["not valid YAML"])
    elif isinstance(exc, ReaderError):
        line, col = _line_col(text, exc.position)
        character = exc.character if isinstance(exc.character, str) else chr(exc.character)
        message = f"unacceptable character #x{ord(character):04x}: {exc.reason}"
    else:
        message = str(exc)[:200] or type(exc).__name__
    return _fatal(filename, line, col, f"not valid YAML: {' '.join(message.split())}")


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a document is parsed and validated.

    Loading makes some hundred thousand objects that all stay alive until it ends, so each
    collection it would trigger looks at them all for nothing: about 20 % of loading 10,000
    targets. Reference counting still frees what dies; the collector runs again afterwards.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def parse(text: str, filename: str) -> Parsed:
    """Parse YAML text into plain values with the position of every node and key."""
    with _collector_paused():
        return _parse(text, filename)


def _parse(text: str, filename: str) -> Parsed:
    text = text.removeprefix("\ufeff")  # a byte-order mark: not content, not a column
    if not text.strip():
        raise _fatal(filename, 1, 1, "empty catalog")
    lines = _lines(text)
    tabs = _tab_problems(lines, filename) if "\t" in text else []
    if tabs:
        raise CatalogError(tabs)
    root, aliases = _compose(text, filename)
    if root is None:
        raise _fatal(filename, 1, 1, "empty catalog (only comments)")
    if aliases and _expanded_size(root) > MAX_NODES:
        raise _fatal(filename, 1, 1, f"too large: more than {MAX_NODES} values after expanding "
                     "aliases")
    builder = _Builder(lines, filename)
    document = builder.build(root, (), 0)
    return Parsed(document, builder.positions, builder.comments, builder.problems)


def _expanded_size(root: Node) -> int:
    """How many values the document has once aliases are expanded, without expanding them.

    Sizes are memoised per node, so a "billion laughs" document costs as much as its text.
    A node reached again while its own size is being computed (a cycle) counts once; the
    builder reports the cycle.
    """
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


# --- building plain values -----------------------------------------------------------------


def _is_merge(key_node: Node) -> bool:
    """`<<: *base`, written plain, or tagged `!!merge`."""
    if key_node.tag == _PLAIN:
        return bool(key_node.value == "<<")
    return key_node.tag == _MERGE


class _Builder:
    """Turns composed nodes into plain values, noting positions, comments and soft problems."""

    def __init__(self, lines: list[str], filename: str) -> None:
        self.lines = lines
        self.filename = filename
        self.positions: Positions = {(): (1, 1)}
        self.comments: dict[Path_, str] = {}
        self.problems: list[CatalogProblem] = []
        self.count = 0
        self.active: set[int] = set()  # collection nodes being built: an alias to one is a cycle

    def soft(self, mark: Any, path: Path_, message: str) -> None:
        self.problems.append(
            CatalogProblem(self.filename, mark.line + 1, mark.column + 1, dotted(path), message)
        )

    def build(self, node: Node, path: Path_, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _fatal(self.filename, 1, 1, f"too large: more than {MAX_NODES} values "
                         "after expanding aliases")
        mark = node.start_mark
        if depth > MAX_DEPTH:  # reached through aliases: the composer bounds the text itself
            raise _fatal(self.filename, mark.line + 1, mark.column + 1, "nested too deeply")
        self.positions[path] = (mark.line + 1, mark.column + 1)
        kind = type(node)
        if kind is ScalarNode:
            return self.scalar(node, path)
        if id(node) in self.active:
            self.soft(mark, path, "an alias refers to a node that contains it")
            return None
        self.active.add(id(node))
        try:
            if kind is MappingNode:
                return self.mapping(node, path, depth)
            return self.sequence(node, path, depth)
        finally:
            self.active.discard(id(node))

    def scalar(self, node: Node, path: Path_) -> Any:
        tag, text = node.tag, node.value
        try:
            if tag == _PLAIN:
                return _resolve_plain(text)
            construct = _EXPLICIT.get(tag)
            if construct is None:
                self.soft(node.start_mark, path, f"unsupported tag {tag!r}")
                return None
            return construct(text)
        except ValueError as exc:
            self.soft(node.start_mark, path, f"bad value {text!r}: {exc}")
            return None

    def sequence(self, node: Node, path: Path_, depth: int) -> list[Any]:
        items = []
        for i, item in enumerate(node.value):
            at = path + (i,)
            items.append(self.build(item, at, depth + 1))
            comment = self.comment(item)
            if comment:
                self.comments[at] = comment
        return items

    def mapping(self, node: Node, path: Path_, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first: dict[str, Node] = {}
        merged: list[Node] = []
        for key_node, value_node in node.value:
            if _is_merge(key_node):
                sources = value_node.value if type(value_node) is SequenceNode else [value_node]
                for source in sources:
                    if type(source) is MappingNode and id(source) not in self.active:
                        merged.append(source)
                    else:
                        self.soft(key_node.start_mark, path, "'<<' needs a mapping (or a list "
                                  "of mappings) to merge")
                continue
            if type(key_node) is not ScalarNode:
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
            out[key] = self.build(value_node, path + (key,), depth + 1)
            if type(value_node) is ScalarNode and value_node.value == "" and \
                    not value_node.style:
                # `chat:` with nothing after it: the empty value sits on the next line; point
                # at the key the user wrote instead
                self.positions[path + (key,)] = self.positions[path + ("<key>", key)]
        # '<<: *base' fills in keys the mapping does not set itself; earlier sources win
        for source in merged:
            self.active.add(id(source))
            try:
                for key_node, value_node in source.value:
                    key = str(key_node.value)
                    if type(key_node) is ScalarNode and key not in out:
                        self.key(key_node, path, key)
                        out[key] = self.build(value_node, path + (key,), depth + 1)
            finally:
                self.active.discard(id(source))
        return out

    def key(self, key_node: Node, path: Path_, key: str) -> None:
        self.positions[path + ("<key>", key)] = (
            key_node.start_mark.line + 1,
            key_node.start_mark.column + 1,
        )

    # --- comments: the parser drops them, so they are read from the lines around the marks

    def comment(self, node: Node) -> str | None:
        """The comment beside a list item (same line), else the comment lines right above it."""
        return self.beside(node) or self.above(node.start_mark.line)

    def beside(self, node: Node) -> str | None:
        kind = type(node)
        if kind is ScalarNode or getattr(node, "flow_style", False):
            return self.after(node.end_mark)
        if kind is MappingNode:  # block mapping: a comment on any of its scalar lines
            for key_node, value_node in node.value:
                part = value_node if type(value_node) is ScalarNode else key_node
                if type(part) is ScalarNode:
                    found = self.after(part.end_mark)
                    if found:
                        return found
        return None

    def after(self, mark: Any) -> str | None:
        """The comment that follows a mark on its line."""
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
    parsed: Parsed,
    filename: str,
    allowed_keys: AllowedKeys = _no_keys,
    explain: Callable[[Path_, Any], str | None] = _no_explanation,
) -> list[CatalogProblem]:
    """One problem per validation error, located at the node (or key) it concerns.

    `allowed_keys(path)` lists the keys a mapping at `path` may have (for "did you mean");
    `explain(path, error)` may give a better message than the generic one.
    """
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
    with _collector_paused():
        parsed = _parse(text, filename)
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
