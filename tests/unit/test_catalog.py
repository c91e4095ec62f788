"""The catalog loader: each kind of error located right, every error in one pass, valid forms."""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe import catalog
from probe.catalog import LoadedCatalog
from probe.errors import CatalogError

HEAD = "version: 1\nplatforms:\n  wa:\n    features:\n      chat:\n"


def problems(text: str, filename: str = "probes.yaml") -> list[str]:
    """The located problem lines for a catalog text that must be refused."""
    with pytest.raises(CatalogError) as info:
        catalog.loads(textwrap.dedent(text), filename)
    lines = [str(p) for p in info.value.problems]
    assert str(info.value) == "\n".join(lines)
    return lines


def one(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def ok(text: str) -> LoadedCatalog:
    return catalog.loads(textwrap.dedent(text), "probes.yaml")


# --- each error kind, located at the node (or key) it concerns ----------------------------

# (catalog text, the one expected problem line)
ERRORS = [
    (  # wrong type
        HEAD + "        - tcp://h.example:1\nsettings:\n  attempts: many\n",
        "probes.yaml:8:13: settings.attempts: expected a whole number, got 'many'",
    ),
    (  # unknown key, close to a known one: located at the key
        HEAD + "        - tcp://h.example:1\nsettings:\n  timout: 5s\n",
        "probes.yaml:8:3: settings.timout: unknown key 'timout', did you mean 'timeout'?",
    ),
    (  # unknown key in a target mapping, nothing close: the known keys are listed
        HEAD + "        - url: tcp://h.example:1\n          colour: red\n",
        ("probes.yaml:7:11: platforms.wa.features.chat[0].colour: unknown key 'colour' (known: "
         "url, "
        "name, sni, address, ca_file, alpn, timeout, attempts, expect, sustain, call)"),
    ),
    (  # the contract's own example
        HEAD + "        - stunn://stun.example:3478\n",
        ("probes.yaml:6:11: platforms.wa.features.chat[0]: unknown scheme 'stunn' (one of dns, "
         "tcp, "
        "tls, https, quic, stun, turn, reflect)"),
    ),
    (  # port out of range
        HEAD + "        - tcp://h.example:65536\n",
        ("probes.yaml:6:11: platforms.wa.features.chat[0]: port out of range (1-65535) in "
        "'tcp://h.example:65536'"),
    ),
    (  # tcp needs a port
        HEAD + "        - tcp://h.example\n",
        ("probes.yaml:6:11: platforms.wa.features.chat[0]: tcp:// targets need a port: "
        "'tcp://h.example'"),
    ),
    (  # a url in mapping form is located at its value
        HEAD + "        - url: tcp://h.example:0\n",
        ("probes.yaml:6:16: platforms.wa.features.chat[0].url: port out of range (1-65535) in "
        "'tcp://h.example:0'"),
    ),
    (  # bad duration
        HEAD + "        - url: tcp://h.example:1\n          timeout: 5 sec\n",
        ("probes.yaml:7:20: platforms.wa.features.chat[0].timeout: bad duration '5 sec' "
        "(use e.g. 300ms, 5s, 2m)"),
    ),
    (  # bad rate
        HEAD + "        - url: https://h.example/\n          expect: {min_throughput: 1 Mbps}\n",
        ("probes.yaml:7:36: platforms.wa.features.chat[0].expect.min_throughput: bad rate "
        "'1 Mbps' (use e.g. 128kbit/s, 1Mbit/s)"),
    ),
    (  # bad percent
        HEAD + "        - url: stun://h.example\n          expect: {max_loss: 120%}\n",
        ("probes.yaml:7:30: platforms.wa.features.chat[0].expect.max_loss: percentage must be "
        "between 0% and 100%, got '120%'"),
    ),
    (  # need other than any/all
        HEAD + "        need: some\n        targets: [tcp://h.example:1]\n",
        ("probes.yaml:6:15: platforms.wa.features.chat.need: input should be 'any' or 'all', "
        "got 'some'"),
    ),
    (  # a feature with no targets, list form
        HEAD.replace("chat:\n", "chat: []\n"),
        "probes.yaml:5:13: platforms.wa.features.chat: no targets: a feature needs at least one",
    ),
    (  # a feature with no targets, mapping form
        HEAD + "        need: any\n        targets: []\n",
        ("probes.yaml:7:18: platforms.wa.features.chat.targets: no targets: a feature needs at "
        "least one"),
    ),
    (  # a feature left empty
        HEAD,
        ("probes.yaml:5:7: platforms.wa.features.chat: expected a list of targets, or a mapping "
        "with 'need' and 'targets'"),
    ),
    (  # sni on stun
        HEAD + "        - url: stun://h.example\n          sni: x.example\n",
        ("probes.yaml:7:16: platforms.wa.features.chat[0].sni: sni does not apply to stun:// "
        "targets (only tls, https, quic)"),
    ),
    (  # sustain on tcp
        HEAD + "        - url: tcp://h.example:1\n          sustain: 20s\n",
        ("probes.yaml:7:20: platforms.wa.features.chat[0].sustain: sustain applies to stun:// "
        "targets only"),
    ),
    (  # alpn on tcp
        HEAD + "        - url: tcp://h.example:1\n          alpn: [h2]\n",
        ("probes.yaml:7:17: platforms.wa.features.chat[0].alpn: alpn does not apply to tcp:// "
        "targets (only tls, https, quic)"),
    ),
    (  # address on dns
        HEAD + "        - url: dns://h.example\n          address: 10.0.0.1\n",
        ("probes.yaml:7:20: platforms.wa.features.chat[0].address: address does not apply to "
        "dns:// targets (they only resolve)"),
    ),
    (  # min_throughput where nothing is downloaded
        HEAD + "        - url: tls://h.example\n          expect: {min_throughput: 1Mbit/s}\n",
        ("probes.yaml:7:19: platforms.wa.features.chat[0].expect: expect.min_throughput applies "
        "to https:// targets only"),
    ),
    (  # turn transport
        HEAD + "        - turn://h.example?transport=sctp\n",
        ("probes.yaml:6:11: platforms.wa.features.chat[0]: turn transport must be udp or tcp, "
        "got 'sctp'"),
    ),
    (  # a bad host name
        HEAD + "        - tcp://bad_-.exa mple:1\n",
        ("probes.yaml:6:11: platforms.wa.features.chat[0]: spaces in target URL "
        "'tcp://bad_-.exa mple:1'"),
    ),
    (  # a bad platform id: located at the key
        "version: 1\nplatforms:\n  Whats App:\n    features:\n      chat: [tcp://h.example:1]\n",
        ("probes.yaml:3:3: platforms.Whats App: bad platform id 'Whats App': use lowercase "
        "letters, digits, '_' and '-'"),
    ),
    (  # a bad feature id
        "version: 1\nplatforms:\n  wa:\n    features:\n      Chat!: [tcp://h.example:1]\n",
        ("probes.yaml:5:7: platforms.wa.features.Chat!: bad feature id 'Chat!': use lowercase "
        "letters, digits, '_' and '-'"),
    ),
    (  # an unsupported version
        "version: 2\nplatforms:\n  wa:\n    features:\n      chat: [tcp://h.example:1]\n",
        "probes.yaml:1:10: version: unsupported version 2 (this probe reads version 1)",
    ),
    (  # no platforms at all
        "version: 1\n",
        "probes.yaml:1:1: platforms: required key 'platforms' is missing",
    ),
    (  # a list where the catalog mapping belongs
        "- tcp://h.example:1\n",
        ("probes.yaml:1:1: a catalog is a mapping with version, settings, controls and platforms, "
        "got ['tcp://h.example:1']"),
    ),
    (  # a target that is neither a URL nor a mapping
        HEAD + "        - 42\n",
        ("probes.yaml:6:11: platforms.wa.features.chat[0]: expected a target URL or a mapping "
        "with 'url', got 42"),
    ),
    (  # a resolver that is not an address
        HEAD + "        - tcp://h.example:1\nsettings:\n  resolver: dns.example\n",
        ("probes.yaml:8:13: settings.resolver: expected an IP address with an optional port, got "
        "'dns.example'"),
    ),
    (  # a domestic flag that is not a boolean
        HEAD + "        - tcp://h.example:1\ncontrols:\n  - url: https://c.example/\n"
        "    domestic: maybe\n",
        "probes.yaml:9:15: controls[0].domestic: expected true or false, got 'maybe'",
    ),
    (  # a tag the catalog does not know
        HEAD + "        - !secret tcp://h.example:1\n",
        "probes.yaml:6:11: platforms.wa.features.chat[0]: unsupported tag '!secret'",
    ),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS, ids=[e[1].split(": ")[-1][:40]
                                                             for e in ERRORS])
def test_each_error_is_located(text: str, expected: str) -> None:
    found = problems(text)
    assert expected in found, found


@pytest.mark.parametrize(("text", "expected"), [
    ("", "probes.yaml:1:1: empty catalog"),
    ("   \n\n", "probes.yaml:1:1: empty catalog"),
    ("# only a comment\n", "probes.yaml:1:1: empty catalog (only comments)"),
    ("platforms: [1, 2\n", ("probes.yaml:2:1: not valid YAML: while parsing a flow sequence, "
                           "expected ',' or ']', but got '<stream end>'")),
    ("a: b\n---\nc: d\n", ("probes.yaml:2:1: not valid YAML: expected a single document in the "
                          "stream, but found another document")),
])
def test_fatal_problems(text: str, expected: str) -> None:
    assert problems(text) == [expected]


def test_tabs_are_reported_on_every_line() -> None:
    text = "version: 1\nplatforms:\n\twa:\n  x:\n\t  features: {}\n"
    assert problems(text) == [
        "probes.yaml:3:1: tab in indentation (use spaces)",
        "probes.yaml:5:1: tab in indentation (use spaces)",
    ]


def test_duplicate_platform_is_located_and_other_errors_still_reported() -> None:
    text = """\
        version: 1
        platforms:
          wa:
            features:
              chat: [tcp://h.example:1]
          wa:
            features:
              chat: [tcp://h.example:2]
          tg:
            features:
              chat: [tcp://h.example:99999]
        """
    assert problems(text) == [
        "probes.yaml:6:3: platforms.wa: duplicate key 'wa' (first on line 3)",
        ("probes.yaml:11:14: platforms.tg.features.chat[0]: port out of range (1-65535) in "
        "'tcp://h.example:99999'"),
    ]


def test_bad_platform_id_reported_alongside_errors_inside_platforms() -> None:
    text = """\
        version: 1
        platforms:
          Bad:
            features:
              chat: [tcp://h.example:1]
          good:
            features:
              chat: [stunn://h.example]
        """
    found = problems(text)
    assert len(found) == 2, found
    assert found[0].startswith("probes.yaml:3:3: platforms.Bad: bad platform id 'Bad'")
    assert found[1].startswith("probes.yaml:8:14: platforms.good.features.chat[0]: unknown scheme")


FIVE_ERRORS = """\
    version: 1
    settings:
      timeout: soon
    platforms:
      wa:
        features:
          chat:
            need: most
            targets:
              - stunn://h.example
              - url: stun://h.example
                sni: x.example
          calls: [tcp://h.example:70000]
    """


def test_five_errors_give_five_located_lines() -> None:
    found = problems(FIVE_ERRORS)
    assert [line.split(": ")[0] for line in found] == [
        "probes.yaml:3:12", "probes.yaml:8:15", "probes.yaml:10:13", "probes.yaml:12:18",
        "probes.yaml:13:15",
    ]


def test_validate_command_prints_five_located_lines(tmp_path: Path) -> None:
    cli = pytest.importorskip("probe.cli")
    from typer.testing import CliRunner

    path = tmp_path / "probes.yaml"
    path.write_text(textwrap.dedent(FIVE_ERRORS))
    result = CliRunner().invoke(cli.app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith(str(path))]
    assert len(lines) == 5, result.output
    assert "Traceback" not in result.output


def test_cannot_read_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as info:
        catalog.load(tmp_path / "missing.yaml")
    assert "cannot read" in str(info.value)


# --- valid forms ---------------------------------------------------------------------------

VALID = """\
    version: 1
    settings:
      timeout: 300ms
      attempts: 2
      resolver: "[2001:db8::53]:5353"
    controls:
      - https://c.example/   # source: beside a control
      - url: https://d.example/
        domestic: true
    platforms:
      wa:
        name: WhatsApp
        features:
          chat:
            need: any
            targets:
              - tcp://g.example:5222          # source: beside a string
              # source: above a mapping
              - url: tcp://[2001:db8::1]:443
                name: v6
          calls:
            - url: stun://s.example
              sustain: 2m
              expect: {max_rtt: 250ms, max_loss: 5%}
            - turn://t.example:80?transport=tcp
            - turn://t.example
          web:
            - url: https://w.example/path?q=1   # source: beside the url of a mapping
              expect:
                min_throughput: 128kbit/s
              attempts: 5
              timeout: 2
            - {url: "quic://w.example", alpn: [h3], sni: other.example}  # source: flow
      tg:
        features:
          chat: [dns://t.example]
    """


def test_valid_forms_load_with_units_converted() -> None:
    loaded = ok(VALID)
    cat = loaded.catalog
    assert cat.settings.timeout == 0.3 and cat.settings.attempts == 2
    chat = cat.platforms["wa"].features["chat"]
    assert chat.need == "any"
    assert [t.url for t in chat.targets] == ["tcp://g.example:5222", "tcp://[2001:db8::1]:443"]
    assert chat.targets[1].endpoint.host == "2001:db8::1" and chat.targets[1].endpoint.is_ip
    calls = cat.platforms["wa"].features["calls"]
    assert calls.need == "all"  # the documented default
    stun = calls.targets[0]
    assert stun.sustain == 120.0 and stun.endpoint.port == 3478
    assert stun.expect.max_rtt == 0.25 and stun.expect.max_loss == 0.05
    assert calls.targets[1].endpoint.query == {"transport": "tcp"}
    assert calls.targets[1].endpoint.port == 80
    assert calls.targets[2].endpoint.query == {"transport": "udp"}
    web = cat.platforms["wa"].features["web"].targets
    assert web[0].expect.min_throughput == 128_000 and web[0].timeout == 2.0
    assert web[0].endpoint.path == "/path"
    assert web[1].alpn == ["h3"] and web[1].endpoint.port == 443
    assert cat.controls[1].domestic and not cat.controls[0].domestic


def test_sources_beside_or_above_each_target() -> None:
    loaded = ok(VALID)
    assert loaded.source_of(None, None, 0) == "source: beside a control"
    assert loaded.source_of(None, None, 1) is None
    assert loaded.source_of("wa", "chat", 0) == "source: beside a string"
    assert loaded.source_of("wa", "chat", 1) == "source: above a mapping"
    assert loaded.source_of("wa", "web", 0) == "source: beside the url of a mapping"
    assert loaded.source_of("wa", "web", 1) == "source: flow"
    assert loaded.source_of("wa", "calls", 0) is None


def test_hash_inside_a_url_is_not_a_comment() -> None:
    loaded = ok(HEAD + "        - https://h.example/#frag\n")
    assert loaded.source_of("wa", "chat", 0) is None


def test_jobs_order_controls_first_then_file_order_and_only() -> None:
    loaded = ok(VALID)
    jobs = list(loaded.jobs())
    assert [j.platform for j in jobs[:2]] == [None, None]
    assert jobs[1].domestic and jobs[0].is_control
    assert [(j.platform, j.feature, j.target.url) for j in jobs[2:]] == [
        ("wa", "chat", "tcp://g.example:5222"),
        ("wa", "chat", "tcp://[2001:db8::1]:443"),
        ("wa", "calls", "stun://s.example"),
        ("wa", "calls", "turn://t.example:80?transport=tcp"),
        ("wa", "calls", "turn://t.example"),
        ("wa", "web", "https://w.example/path?q=1"),
        ("wa", "web", "quic://w.example"),
        ("tg", "chat", "dns://t.example"),
    ]
    web = jobs[7]
    assert (web.timeout, web.attempts) == (2.0, 5)
    assert (jobs[2].timeout, jobs[2].attempts) == (0.3, 2)  # from settings
    assert [j.platform for j in loaded.jobs({"tg"})] == [None, None, "tg"]


def test_anchors_and_merge_keys() -> None:
    loaded = ok("""\
        version: 1
        platforms:
          wa:
            features:
              chat:
                - &base {url: "tcp://a.example:1", timeout: 2s, attempts: 4}
                - {<<: *base, url: "tcp://b.example:1"}
        """)
    a, b = loaded.catalog.platforms["wa"].features["chat"].targets
    assert (b.url, b.timeout, b.attempts) == ("tcp://b.example:1", 2.0, 4)
    assert a.url == "tcp://a.example:1"


def test_recursive_alias_is_refused_not_a_crash() -> None:
    found = problems("version: 1\nplatforms: &a\n  x: *a\n")
    assert found and all(line.startswith("probes.yaml:") for line in found)


def test_alias_bomb_is_refused() -> None:
    lines = ["version: 1", 'a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    found = problems("\n".join(lines) + "\n")
    assert found == ["probes.yaml:1:1: too large: more than 2000000 values after expanding aliases"]


def _write_ca(folder: Path) -> Path:
    from probe.mock.certs import TestCA

    return TestCA("catalog test CA").write_ca(folder / "ca.pem")


def test_ca_file_relative_to_the_catalog_not_the_cwd(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cat"
    (folder / "certs").mkdir(parents=True)
    ca = _write_ca(folder / "certs")
    (folder / "probes.yaml").write_text(
        HEAD + "        - url: tls://h.example\n          ca_file: certs/ca.pem\n"
        "settings:\n  ca_file: certs/ca.pem\n")
    monkeypatch.chdir(tmp_path)  # elsewhere: the path must not depend on the cwd
    job = next(catalog.load("cat/probes.yaml").jobs())
    assert job.ca_files == (str(ca.resolve()), str(ca.resolve()))
    # through a symlink to the catalog, as the repository's probes.yaml is
    os.symlink(folder / "probes.yaml", tmp_path / "link.yaml")
    job = next(catalog.load("link.yaml").jobs())
    assert job.ca_files[0] == str(ca.resolve())


def test_missing_ca_file_is_located(tmp_path: Path) -> None:
    path = tmp_path / "probes.yaml"
    path.write_text(HEAD + "        - url: tls://h.example\n          ca_file: nope.pem\n")
    with pytest.raises(CatalogError) as info:
        catalog.load(path)
    (problem,) = info.value.problems
    assert (problem.line, problem.col) == (7, 20)
    assert problem.path == "platforms.wa.features.chat[0].ca_file"
    assert problem.message.startswith("CA file not found: 'nope.pem'")


def test_loads_without_base_keeps_ca_file_relative_to_the_named_file() -> None:
    loaded = catalog.loads(HEAD + "        - url: tls://h.example\n          ca_file: x.pem\n",
                           "/srv/cat/probes.yaml")
    assert next(loaded.jobs()).ca_files == (str(Path("/srv/cat/x.pem").resolve()),)


def test_parse_endpoint_and_split_host_port() -> None:
    e = catalog.parse_endpoint("TLS://Web.Example:8443")
    assert (e.scheme, e.host, e.port, e.path) == ("tls", "web.example", 8443, "/")
    assert catalog.parse_endpoint("quic://[::1]").port == 443
    assert catalog.split_host_port("[::1]:53", 53) == ("::1", 53)
    assert catalog.split_host_port("10.0.0.1", 53) == ("10.0.0.1", 53)
    assert catalog.split_host_port("::1", 5353) == ("::1", 5353)
    for bad in ("10.0.0.1:0", "[::1]:x", "name:53", "[::1"):
        with pytest.raises(ValueError):
            catalog.split_host_port(bad, 53)
    for bad in ("tcp://u:p@h.example:1", "tls://h.example/path", "tcp://h.example:1?x=1",
                "dns://h.example:53", "tcp://[::1:80", "ftp://h.example", "h.example:80"):
        with pytest.raises(ValueError):
            catalog.parse_endpoint(bad)


@pytest.mark.parametrize(("value", "seconds"), [("300ms", 0.3), ("5s", 5.0), ("2m", 120.0),
                                                (1.5, 1.5), (" 10 s ", 10.0)])
def test_durations(value: object, seconds: float) -> None:
    assert catalog.parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["5", "0s", "-1s", True, float("inf"), float("nan"), "2h",
                                   "100000s", None])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError):
        catalog.parse_duration(value)


def test_rates_and_percents() -> None:
    assert catalog.parse_rate("1Mbit/s") == 1e6 and catalog.parse_rate("128kbit/s") == 128e3
    assert catalog.parse_percent("10%") == 0.1 and catalog.parse_percent(0.25) == 0.25
    for bad in ("1 Mbps", 0, "-1kbit/s"):
        with pytest.raises(ValueError):
            catalog.parse_rate(bad)
    for bad in ("101%", 2, "ten%"):
        with pytest.raises(ValueError):
            catalog.parse_percent(bad)


# --- profiles ------------------------------------------------------------------------------


def _profile(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mine.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_profile_overlay_adds_controls_platforms_and_orders(tmp_path: Path) -> None:
    base = ok(VALID)
    name = _profile(tmp_path, """\
        version: 1
        name: Testland
        settings: {attempts: 7}
        controls:
          - url: https://local.example/  # source: a domestic portal
            domestic: true
          - https://c.example/            # already a control: kept once
        platforms:
          local:
            features:
              chat: [tls://chat.local.example]  # source: local chat
          wa:
            features:
              media: [tls://m.example]  # source: a feature added to a platform
        order: [local, tg, nosuch]
        """)
    loaded = catalog.apply_profile(base, name)
    assert list(loaded.catalog.platforms) == ["local", "tg", "wa"]
    assert [c.url for c in loaded.catalog.controls] == [
        "https://c.example/", "https://d.example/", "https://local.example/"]
    assert loaded.catalog.controls[2].domestic
    assert loaded.catalog.settings.attempts == 7 and loaded.catalog.settings.timeout == 0.3
    assert loaded.source_of(None, None, 2) == "source: a domestic portal"
    assert loaded.source_of("local", "chat", 0) == "source: local chat"
    assert loaded.source_of("wa", "media", 0) == "source: a feature added to a platform"
    assert loaded.source_of("wa", "chat", 0) == "source: beside a string"  # base kept
    assert loaded.profile_path == name and loaded.path == base.path
    assert loaded.sha256 == base.sha256 and loaded.profile_sha256
    assert [j.platform for j in loaded.jobs()][:3] == [None, None, None]


def test_profile_only_selects(tmp_path: Path) -> None:
    loaded = catalog.apply_profile(ok(VALID), _profile(tmp_path, "version: 1\nonly: [tg]\n"))
    assert list(loaded.catalog.platforms) == ["tg"]


def test_bad_profiles_are_located(tmp_path: Path) -> None:
    name = _profile(tmp_path, """\
        version: 1
        only: [tg, nosuch]
        platforms:
          wa:
            features:
              chat: [tcp://x.example:1]
        controls:
          - url: https://x.example/
            domestik: true
        """)
    with pytest.raises(CatalogError) as info:
        catalog.apply_profile(ok(VALID), name)
    assert [str(p) for p in info.value.problems] == [
        f"{name}:9:5: controls[0].domestik: unknown key 'domestik', did you mean 'domestic'?",
    ]
    name = _profile(tmp_path, """\
        version: 1
        only: [tg, nosuch]
        platforms:
          wa:
            features:
              chat: [tcp://x.example:1]
        """)
    with pytest.raises(CatalogError) as info:
        catalog.apply_profile(ok(VALID), name)
    found = [str(p) for p in info.value.problems]
    assert found[0] == f"{name}:2:12: only[1]: no platform 'nosuch' in the catalog or the " \
                       "profile (known: wa, tg)"
    assert found[1].startswith(f"{name}:6:7: platforms.wa.features.chat: platform 'wa' already "
                               "has a feature 'chat'")


def test_unknown_profile_name() -> None:
    with pytest.raises(CatalogError) as info:
        catalog.apply_profile(ok(VALID), "xx")
    assert "no such profile 'xx' (known: ae, cn, ir, ru" in str(info.value)


def test_shipped_profile_names_and_load_parameter(tmp_path: Path) -> None:
    assert {"ru", "cn", "ir", "ae"} <= set(catalog.profile_names())
    path = tmp_path / "probes.yaml"
    path.write_text(textwrap.dedent(VALID).replace("wa:", "whatsapp:"))
    loaded = catalog.load(path, profile="cn")
    assert loaded.profile == "cn"
    assert any(c.domestic and "baidu" in c.url for c in loaded.catalog.controls)


def test_default_catalog_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    packaged = catalog.default_catalog_path()
    assert packaged.name == "probes.yaml" and packaged.parent.name == "data"
    (tmp_path / "probes.yaml").write_text(VALID)
    assert catalog.default_catalog_path() == Path("probes.yaml")


# --- JSON Schema ---------------------------------------------------------------------------


def test_json_schema_accepts_the_short_forms_and_refuses_bad_ids() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    import json

    from probe import yamlpos

    schema = catalog.json_schema()
    json.dumps(schema)  # serialisable as is
    document = yamlpos.parse(textwrap.dedent(VALID), "x").document
    jsonschema.validate(document, schema)
    bad = dict(document, platforms={"Bad Id": document["platforms"]["wa"]})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad = dict(document, settings={"timeout": "soon"})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    jsonschema.validate({"version": 1, "only": ["wa"]}, catalog.json_schema("profile"))


# --- the parser: libyaml for speed, the same document, positions and words as before ------


def _parsed_both_ways(text: str, monkeypatch: pytest.MonkeyPatch) -> tuple[object, object]:
    """(libyaml's parse, PyYAML's pure-Python parse) of the same text, as comparable tuples."""
    from probe import yamlpos

    def parsed() -> tuple[object, ...]:
        p = yamlpos.parse(text, "x.yaml")
        return (p.document, p.positions, p.comments, [str(q) for q in p.problems])

    assert yamlpos._CLoader is not None, "PyYAML without libyaml: the fast path is not tested"
    fast = parsed()
    monkeypatch.setattr(yamlpos, "_CLoader", None)
    return fast, parsed()


@pytest.mark.parametrize("text", [
    textwrap.dedent(VALID),
    textwrap.dedent(FIVE_ERRORS),
    "a: &x {b: 1}\nc: *x\nd: {<<: *x, e: [1, 2]}\nb: 2\nb: 3\n",
    "a:\r\n  - x  # one\r\n  # two\r\n  - y\r\n",
    "a: \"l1\u2028l2\"\nb:\n  - é😀  # wide\n  - [x]  # flow\n",
])
def test_libyaml_and_pure_python_parse_alike(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, pure = _parsed_both_ways(text, monkeypatch)
    assert fast == pure


def test_comments_found_whatever_the_line_breaks() -> None:
    """libyaml drops comments: they are read from the lines, which must be the parser's lines."""
    text = textwrap.dedent(VALID)
    for newline in ("\r\n", "\r"):
        loaded = catalog.loads(text.replace("\n", newline), "probes.yaml")
        assert loaded.sources == ok(VALID).sources
    # a line separator inside a quoted name moves every later line down by one for the parser
    shifted = text.replace("name: WhatsApp", 'name: "Whats\u2028App"')
    assert ok(shifted).sources == ok(VALID).sources
    found = problems(shifted.replace("tcp://g.example:5222", "tcp://g.example:0"))
    assert found[0].startswith("probes.yaml:18:13: platforms.wa.features.chat.targets[0]: ")


def test_comment_beside_a_multi_line_item_and_above_with_blank_comment_lines() -> None:
    loaded = ok(HEAD + "        - 'tcp://h.example:1'   # source: quoted\n"
                "        - {url: 'tcp://h.example:2',\n           name: two}  # source: end\n"
                "        #\n        # source: above\n        #   on two lines\n        #\n"
                "        - >-\n          tcp://h.example:3\n")
    assert loaded.source_of("wa", "chat", 0) == "source: quoted"
    assert loaded.source_of("wa", "chat", 1) == "source: end"
    assert loaded.source_of("wa", "chat", 2) == "source: above on two lines"
    assert loaded.catalog.platforms["wa"].features["chat"].targets[2].url == "tcp://h.example:3"


# (plain scalar, the value YAML 1.2 gives it, as the loader always has)
SCALARS = [
    ("yes", "yes"), ("on", "on"), ("no", "no"), ("y", "y"), ("true", True), ("False", False),
    ("TRUE", True), ("tRUE", "tRUE"), ("~", None), ("null", None), ("", None), ("Null", None),
    ("010", 10), ("0o17", 15), ("0x1F", 31), ("0b101", 5), ("1_000", 1000), ("-7", -7),
    ("+7", 7), ("1:30", "1:30"), ("1.5", 1.5), (".5", 0.5), ("1e3", 1000.0), ("-.inf", -math.inf),
    ("2001-12-14", "2001-12-14"), ("0x", "0x"), ("1.2.3", "1.2.3"), ("<<", "<<"), ("=", "="),
]


@pytest.mark.parametrize(("plain", "value"), SCALARS)
def test_plain_scalars_resolve_as_yaml_1_2(plain: str, value: object) -> None:
    from probe import yamlpos

    got = yamlpos.parse(f"v: {plain}\n", "x").document["v"]
    assert got == value and type(got) is type(value)


def test_nan_and_tagged_scalars() -> None:
    from probe import yamlpos

    parsed = yamlpos.parse('a: .NaN\nb: !!int "0x10"\nc: !!bool yes\nd: !!str 5\n'
                           'e: !!float "2"\nf: !!null x\ng: !!timestamp 2001-01-01\n'
                           'h: "true"\n', "x")
    doc = parsed.document
    assert math.isnan(doc.pop("a"))
    assert doc == {"b": 16, "c": True, "d": "5", "e": 2.0, "f": None, "g": "2001-01-01",
                   "h": "true"}
    assert not parsed.problems


def test_bad_values_are_soft_problems_located() -> None:
    from probe import yamlpos

    parsed = yamlpos.parse("a: !!int x1\nb: +_\nc: !!bool maybe\nd: !!binary aGk=\n", "x")
    assert [str(p) for p in parsed.problems] == [
        "x:1:4: a: bad value 'x1': not a whole number",
        "x:2:4: b: bad value '+_': not a whole number",
        "x:3:4: c: bad value 'maybe': not true or false",
        "x:4:4: d: unsupported tag 'tag:yaml.org,2002:binary'",
    ]
    assert parsed.document == {"a": None, "b": None, "c": None, "d": None}


def test_a_reused_anchor_counts_from_where_it_is_redefined() -> None:
    from probe import yamlpos

    doc = yamlpos.parse("a: &x 1\nb: *x\nc: &x 2\nd: *x\n", "x").document
    assert doc == {"a": 1, "b": 1, "c": 2, "d": 2}


@pytest.mark.parametrize("pure", [False, True])
def test_hostile_nesting_is_refused_at_its_place_not_a_crash(
        pure: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """libyaml's own composer recurses in C and would crash the process on this."""
    from probe import yamlpos

    if pure:
        monkeypatch.setattr(yamlpos, "_CLoader", None)
    assert problems("a: " + "[" * 200_000 + "]" * 200_000 + "\n") == [
        "probes.yaml:1:68: nested too deeply"]
    block = "".join(f"{'  ' * i}k:\n" for i in range(100))
    assert problems(block) == ["probes.yaml:65:129: nested too deeply"]


def test_aliases_nested_past_the_depth_bound_are_refused() -> None:
    text = "a: &a " + "[" * 60 + "]" * 60 + "\nb: " + "[" * 10 + "*a" + "]" * 10 + "\n"
    found = problems(text)
    assert found == ["probes.yaml:1:61: nested too deeply"]


@pytest.mark.parametrize(("text", "expected"), [
    ("a: b\x01c\n", ("probes.yaml:1:5: not valid YAML: unacceptable character #x0001: "
                     "special characters are not allowed")),
    ("a: 1\nb: [x\u2028y\ud800]\n", ("probes.yaml:3:2: not valid YAML: unacceptable "
                                     "character #xd800: special characters are not allowed")),
    ("a: *nope\n", "probes.yaml:1:4: not valid YAML: found undefined alias 'nope'"),
])
def test_texts_no_parser_reads_are_located(text: str, expected: str) -> None:
    assert problems(text) == [expected]


# --- mock scenarios are checked as catalogs are -------------------------------------------


def test_a_mock_scenario_reports_duplicates_and_errors_located(tmp_path: Path) -> None:
    from probe.mock import world

    path = tmp_path / "scenario.yaml"
    path.write_text("version: 1\nendpoints:\n  - kind: tcp\n    kind: tls\n  - kind: tcp\n"
                    "    prot: 1\n")
    with pytest.raises(CatalogError) as info:
        world.load_scenario(path)
    assert [str(p) for p in info.value.problems] == [
        f"{path}:4:5: endpoints[0].kind: duplicate key 'kind' (first on line 3)",
        f"{path}:6:5: endpoints[1].prot: unknown key 'prot'",
    ]
    path.write_text("version: 1\nendpoints:\n  - kind: tcp\n    behaviour: refuse\n")
    scenario = world.load_scenario(path)
    assert [(e.kind, e.behaviour) for e in scenario.endpoints] == [("tcp", "refuse")]


# --- the fast path of target URLs gives what the full parse gives -------------------------

URL_PARTS = st.tuples(
    st.sampled_from([*catalog.SCHEMES, "TCP", "ftp", "tcpx"]),
    st.one_of(
        st.tuples(*[st.integers(0, 300)] * 4).map(lambda t: ".".join(map(str, t))),
        st.sampled_from(["1.2.3.04", "01.2.3.4", "1.2.3", "1.2.3.4.5", "0.0.0.0"]),
        st.from_regex(r"[a-z0-9_.-]{1,12}", fullmatch=True),
        st.sampled_from(["a" * 64 + ".x", ("a" * 60 + ".") * 5, "Web.Example", "h..x", "-a.b"]),
    ),
    st.one_of(st.none(), st.integers(0, 70000).map(str),
              st.sampled_from(["0443", "00000", "99999", ""])),
    st.sampled_from(["", "/", "//", "/x", "/a/b.c", "?transport=tcp", "?transport=sctp",
                     "?transport=udp&x=1", "/?x=1&x=2&y", "?", "/p?q=%41+b&&=1", "#f",
                     "/a?b#c", "/a b", "/\x1c", "/é"]),
)


@settings(max_examples=2000, deadline=None)
@given(URL_PARTS)
def test_simple_urls_parse_as_the_full_parse_does(parts: tuple[str, str, str | None, str]) -> None:
    scheme, host, port, rest = parts
    url = f"{scheme}://{host}{'' if port is None else ':' + port}{rest}"
    simple = catalog._simple_endpoint(url)
    try:
        full = catalog._parse_endpoint_fully(url)
    except ValueError:
        assert simple is None, url
        return
    assert simple is None or simple == full, url


def test_common_urls_take_the_fast_path() -> None:
    for url in ("tcp://10.0.0.1:443", "https://web.example/", "stun://s.example:3478",
                "dns://t.example", "turn://t.example", "turn://t.example:80?transport=tcp",
                "https://w.example/generate_204", "https://w.example/a?b=1&c="):
        assert catalog._simple_endpoint(url) == catalog._parse_endpoint_fully(url)
