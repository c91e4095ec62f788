"""The loader on hostile input: random or mutated catalogs load or raise CatalogError, only."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probe import catalog
from probe.errors import CatalogError

VALID = """\
version: 1
settings:
  timeout: 2s
  attempts: 2
  resolver: 127.0.0.1:53
controls:
  - https://c.example/  # source: control
  - {url: "https://d.example/", domestic: true}
platforms:
  wa:
    name: WhatsApp
    features:
      chat:
        need: any
        targets:
          - tcp://g.example:5222  # source: a
          - url: tcp://[2001:db8::1]:443
            name: v6
            timeout: 300ms
      calls:
        - url: stun://s.example
          sustain: 5s
          expect: {max_rtt: 250ms, max_loss: 5%}
        - turn://t.example:80?transport=tcp
      web:
        - url: https://w.example/
          expect: {min_throughput: 1Mbit/s}
        - {url: "quic://w.example", alpn: [h3], sni: other.example}
  tg:
    features:
      chat: [dns://t.example, &x "tcp://10.0.0.1:443"]
      media: [*x]
"""

YAMLISH = st.text(alphabet=list(" \n-:[]{},#&*!|>'\"%@?`\t~.0123456789abcdeurltpsn/="),
                  max_size=300)


def load_or_refuse(text: str) -> None:
    """Either a catalog or a CatalogError whose every problem is located in the named file."""
    try:
        loaded = catalog.loads(text, "fuzz.yaml")
    except CatalogError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.file == "fuzz.yaml"
            assert problem.line >= 1 and problem.col >= 1
            assert problem.message
        return
    list(loaded.jobs())  # a loaded catalog can be planned


def test_the_seed_catalog_is_valid() -> None:
    loaded = catalog.loads(VALID)
    assert len(list(loaded.jobs())) == 11


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_random_text(text: str) -> None:
    load_or_refuse(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(YAMLISH)
def test_random_yaml_like_text(text: str) -> None:
    load_or_refuse(text)


@st.composite
def text_mutations(draw: st.DrawFn) -> str:
    """The valid catalog with a few characters, lines or tokens changed."""
    text = VALID
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "dup_line", "drop_line", "swap", "token"]))
        lines = text.split("\n")
        if kind == "delete" and text:
            i = draw(st.integers(0, len(text) - 1))
            text = text[:i] + text[i + draw(st.integers(1, 8)):]
        elif kind == "insert":
            i = draw(st.integers(0, len(text)))
            text = text[:i] + draw(st.text(min_size=1, max_size=6)) + text[i:]
        elif kind in ("dup_line", "drop_line", "swap") and len(lines) > 2:
            i = draw(st.integers(0, len(lines) - 2))
            if kind == "dup_line":
                lines.insert(i, lines[i])
            elif kind == "drop_line":
                del lines[i]
            else:
                lines[i], lines[i + 1] = lines[i + 1], lines[i]
            text = "\n".join(lines)
        else:
            old = draw(st.sampled_from(["tcp", "5222", "any", "2s", "wa", "url", "- ", ": ",
                                        "true", "[", "5%", "1Mbit/s", "443", "stun", "  "]))
            new = draw(st.sampled_from(["tls", "0", "99999", "some", "-1s", "WA", "uri", "",
                                        "::", "yes", "{", "500%", "fast", "\t", "&a ", "*a"]))
            text = text.replace(old, new, 1)
    return text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text_mutations())
def test_mutated_catalog_text(text: str) -> None:
    load_or_refuse(text)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 70000) | st.floats(allow_nan=True)
    | st.text(max_size=20) | st.sampled_from(["tcp://h.example:1", "5s", "10%", "any", "1Mbit/s"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, path + (i,))
    return out


@st.composite
def document_mutations(draw: st.DrawFn) -> str:
    """The valid catalog as a document with one node replaced by a random value, as JSON."""
    from probe import yamlpos

    document = yamlpos.parse(VALID, "seed").document
    paths = _paths(document)[1:]
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        parent = document
        try:
            for part in path[:-1]:
                parent = parent[part]
            parent[path[-1]] = draw(JSONISH)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed this path
    return json.dumps(document, allow_nan=True)  # JSON is YAML


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document_mutations())
def test_mutated_catalog_document(text: str) -> None:
    load_or_refuse(text)


def big_catalog(targets: int, per_feature: int = 100) -> str:
    """A catalog of `targets` distinct targets, each with a source comment."""
    lines = ["version: 1", "platforms:"]
    for p in range(targets // per_feature):
        lines += [f"  p{p}:", f"    name: Platform {p}", "    features:", "      f:",
                  "        need: any", "        targets:"]
        for i in range(per_feature):
            lines.append(f"          - tcp://10.{p % 250}.{i // 250}.{i % 250}:{1 + p}"
                         f"  # source: generated {p}/{i}")
    return "\n".join(lines) + "\n"


def test_ten_thousand_targets_load_quickly() -> None:
    text = big_catalog(10_000)
    started = time.perf_counter()
    loaded = catalog.loads(text, "big.yaml")
    elapsed = time.perf_counter() - started
    jobs = list(loaded.jobs())
    print(f"\n10,000-target catalog ({len(text) / 1e6:.2f} MB) loaded in {elapsed:.2f} s")
    assert len(jobs) == 10_000
    assert loaded.source_of("p99", "f", 99) == "source: generated 99/99"
    assert elapsed < 5.0  # a generous guard; the figure above is the measurement


def test_ten_thousand_targets_with_one_error_still_located() -> None:
    text = big_catalog(10_000).replace("tcp://10.57.0.42:58", "tcp://10.57.0.42:70000")
    try:
        catalog.loads(text, "big.yaml")
    except CatalogError as exc:
        (problem,) = exc.problems
        assert problem.path == "platforms.p57.features.f.targets[42]"
        assert text.split("\n")[problem.line - 1].strip().startswith("- tcp://10.57.0.42:70000")
    else:
        raise AssertionError("the bad port was not reported")


PLAIN_SCALARS = st.text(alphabet=list("0123456789_-+.eExXoObB:~nulNUaLtrufsTFinfIN yY"),
                        min_size=1, max_size=8)


@settings(max_examples=1000, deadline=None)
@given(PLAIN_SCALARS)
def test_plain_scalars_mean_what_they_meant_with_ruamel(plain: str) -> None:
    """The loader resolved plain scalars through ruamel.yaml (YAML 1.2) before libyaml: a value
    must still mean the same (a date aside: ruamel makes one, the loader keeps the text)."""
    import datetime
    import warnings

    ruamel = pytest.importorskip("ruamel.yaml")
    from probe import yamlpos

    text = f"v: {plain}\n"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = ruamel.YAML(typ="safe", pure=True).load(text)
    except Exception:  # noqa: BLE001 - ruamel refused: the loader must refuse or flag it too
        theirs = None
    try:
        parsed = yamlpos.parse(text, "x")
    except CatalogError:
        assert theirs is None, plain
        return
    if theirs is None:
        assert parsed.problems, plain
        return
    assert not parsed.problems, plain
    expected, got = theirs["v"], parsed.document["v"]
    if isinstance(expected, datetime.date):
        assert got == plain.strip()
    elif isinstance(expected, float) and math.isnan(expected):
        assert isinstance(got, float) and math.isnan(got)
    else:
        assert (got, type(got)) == (expected, type(expected)), plain
