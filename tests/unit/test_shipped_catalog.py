"""The shipped catalog and profiles: valid, complete, sourced, and free of the known traps.

These tests only read files: no endpoint is contacted.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from probe import catalog, targets_view, yamlpos
from probe.catalog import LoadedCatalog

if TYPE_CHECKING:
    from cryptography.x509 import Certificate

DATA = Path(catalog.__file__).parent / "data"
SHIPPED = DATA / "probes.yaml"
SIGNAL_BUNDLE = DATA / "certs" / "signal-root.pem"
ROOT_LINK = Path(catalog.__file__).parent.parent / "probes.yaml"
FEATURES = {"messaging", "media", "calls", "web"}
# Viber has no stable, testable call endpoint (per-call AWS relays, proprietary UDP); its
# catalog entry says so in a comment instead of shipping a low-confidence address.
NO_CALLS = {"viber"}
# MAX's TURN servers come per conversation, so its calls feature tests the signalling API only;
# the ru profile's domestic STUN control stands in for the UDP path.
NO_UDP_CALLS = {"max"}
# The core features: they rest on a redundant set (`need: any`, two targets or more) or say why not.
CORE = ("messaging", "calls")
# How a catalog states why a feature is `need: all` or rests on one target: a comment starting
# "why all:" on the feature's `need: all` line or on its key line.
WHY_ALL = re.compile(r"#\s*why all:\s*(\S.*)$")


@pytest.fixture(scope="module")
def shipped() -> LoadedCatalog:
    return catalog.load(SHIPPED)


def with_profiles() -> list[str | None]:
    return [None, *catalog.profile_names()]


def all_targets(loaded: LoadedCatalog) -> list[tuple[str | None, str | None, int, catalog.Target]]:
    out: list[tuple[str | None, str | None, int, catalog.Target]] = [
        (None, None, i, c) for i, c in enumerate(loaded.catalog.controls)]
    for pid, platform in loaded.catalog.platforms.items():
        for fid, feature in platform.features.items():
            out += [(pid, fid, i, t) for i, t in enumerate(feature.targets)]
    return out


def catalog_files(profile: str | None) -> list[Path]:
    """The files a catalog (with a profile) is read from, the profile first: it adds platforms."""
    return ([catalog.profile_path(profile)] if profile else []) + [SHIPPED]


def why_all(profile: str | None, pid: str, fid: str) -> str | None:
    """The reason written for a feature being `need: all` (or resting on one target), if any.

    Read from the file that defines the platform: the comment on the feature's `need:` line,
    else on the feature's key line.
    """
    for path in catalog_files(profile):
        text = path.read_text()
        parsed = yamlpos.parse(text, str(path))
        platforms: Any = parsed.document.get("platforms") or {}
        if fid not in (platforms.get(pid) or {}).get("features", {}):
            continue
        lines = text.splitlines()
        feature = ("platforms", pid, "features", fid)
        for at in (feature + ("<key>", "need"), ("platforms", pid, "features", "<key>", fid)):
            if at in parsed.positions:
                found = WHY_ALL.search(lines[parsed.positions[at][0] - 1])
                if found:
                    return found.group(1)
        return None
    return None


def test_repository_probes_yaml_is_a_link_to_the_shipped_one() -> None:
    if not ROOT_LINK.exists():
        pytest.skip("not running from a source checkout")
    assert ROOT_LINK.is_symlink()
    assert os.readlink(ROOT_LINK) == "probe/data/probes.yaml"
    assert ROOT_LINK.resolve() == SHIPPED.resolve()


def test_shipped_profiles_exist() -> None:
    assert {"ru", "cn", "ir", "ae"} <= set(catalog.profile_names())


@pytest.mark.parametrize("profile", with_profiles())
def test_catalog_and_every_profile_validate(profile: str | None) -> None:
    loaded = catalog.load(SHIPPED, profile=profile)
    assert len(loaded.catalog.platforms) >= 6
    assert len(loaded.catalog.controls) >= 3
    if profile:
        assert any(c.domestic for c in loaded.catalog.controls), "a profile adds domestic controls"
        assert loaded.profile == profile


def test_six_platforms_with_their_features(shipped: LoadedCatalog) -> None:
    platforms = shipped.catalog.platforms
    assert {"whatsapp", "telegram", "signal", "messenger", "discord", "viber"} <= set(platforms)
    for pid, platform in platforms.items():
        assert platform.name, pid
        assert set(platform.features) <= FEATURES, pid
        assert {"messaging", "web"} <= set(platform.features), pid


@pytest.mark.parametrize("profile", with_profiles())
def test_every_platform_with_calls_has_a_udp_calls_target(profile: str | None) -> None:
    loaded = catalog.load(SHIPPED, profile=profile)
    for pid, platform in loaded.catalog.platforms.items():
        if pid in NO_CALLS:
            assert "calls" not in platform.features
            continue
        calls = platform.features.get("calls")
        assert calls is not None, f"{pid} has no calls feature"
        schemes = {t.endpoint.scheme for t in calls.targets}
        if pid in NO_UDP_CALLS:
            assert why_all(profile, pid, "calls"), f"{pid} calls must say why it has no UDP target"
            continue
        assert schemes & set(catalog.UDP_SCHEMES), f"{pid} calls has no UDP target: {schemes}"


def test_viber_explains_why_it_has_no_calls() -> None:
    text = SHIPPED.read_text()
    viber = text[text.index("\n  viber:"):]
    assert "# calls: no stable, testable endpoint" in viber


@pytest.mark.parametrize("profile", with_profiles())
def test_no_duplicate_targets(profile: str | None) -> None:
    loaded = catalog.load(SHIPPED, profile=profile)
    controls = [c.url for c in loaded.catalog.controls]
    assert len(controls) == len(set(controls))
    platform_urls = set()
    for pid, platform in loaded.catalog.platforms.items():
        urls = [t.url for f in platform.features.values() for t in f.targets]
        assert len(urls) == len(set(urls)), f"{pid} lists a target twice"
        platform_urls |= set(urls)
    # a control that is also a platform target would make one failure count twice
    assert not set(controls) & platform_urls


@pytest.mark.parametrize("profile", with_profiles())
def test_every_endpoint_carries_a_source_comment(profile: str | None) -> None:
    loaded = catalog.load(SHIPPED, profile=profile)
    missing = [(pid, fid, t.url) for pid, fid, i, t in all_targets(loaded)
               if "source:" not in (loaded.source_of(pid, fid, i) or "")]
    assert not missing


def test_many_endpoint_features_need_any(shipped: LoadedCatalog) -> None:
    p = shipped.catalog.platforms
    assert p["whatsapp"].features["messaging"].need == "any"
    assert p["telegram"].features["messaging"].need == "any"
    assert p["telegram"].features["calls"].need == "any"
    chat = [t.url for t in p["whatsapp"].features["messaging"].targets]
    for n in range(1, 17):  # OONI's e1..e16 on both ports
        assert f"tcp://e{n}.whatsapp.net:5222" in chat and f"tcp://e{n}.whatsapp.net:443" in chat
    # WhatsApp calls: no single name carries them; native (3478) and web (3480) relay ports
    wa_calls = p["whatsapp"].features["calls"]
    assert wa_calls.need == "any"
    assert "stun://stun.fbsbx.com:3478" in [t.url for t in wa_calls.targets]
    assert {3478, 3480} <= {t.endpoint.port for t in wa_calls.targets}
    # Signal's chat channel: the gRPC front door beside the WebSocket one
    signal_chat = p["signal"].features["messaging"]
    assert signal_chat.need == "any"
    assert {"tls://chat.signal.org:443", "tls://grpc.chat.signal.org:443"} <= {
        t.url for t in signal_chat.targets}


@pytest.mark.parametrize("profile", with_profiles())
def test_messaging_and_calls_rest_on_a_redundant_set_or_say_why(profile: str | None) -> None:
    loaded = catalog.load(SHIPPED, profile=profile)
    unexplained = []
    for pid, platform in loaded.catalog.platforms.items():
        for fid in CORE:
            feature = platform.features.get(fid)
            if feature is None or (feature.need == "any" and len(feature.targets) >= 2):
                continue
            if not why_all(profile, pid, fid):
                unexplained.append(f"{pid}.{fid} (need {feature.need}, "
                                   f"{len(feature.targets)} targets)")
    assert not unexplained, "need: any over two targets or more, or a '# why all:' reason"


@pytest.mark.parametrize("profile", with_profiles())
def test_no_feature_rests_on_one_target_without_saying_why(profile: str | None) -> None:
    loaded = catalog.load(SHIPPED, profile=profile)
    single = [(pid, fid) for pid, platform in loaded.catalog.platforms.items()
              for fid, feature in platform.features.items() if len(feature.targets) == 1]
    assert single, "the check below would prove nothing"
    assert [f"{pid}.{fid}" for pid, fid in single if not why_all(profile, pid, fid)] == []


@pytest.mark.parametrize("profile", with_profiles())
def test_quic_targets_sit_only_in_need_any_features(profile: str | None) -> None:
    loaded = catalog.load(SHIPPED, profile=profile)
    quic = [(pid, fid, f.need) for pid, platform in loaded.catalog.platforms.items()
            for fid, f in platform.features.items()
            for t in f.targets if t.endpoint.scheme == "quic"]
    assert quic, "the check below would prove nothing"
    assert [q for q in quic if q[2] != "any"] == []


def test_controls_include_generic_stun_and_quic(shipped: LoadedCatalog) -> None:
    abroad = [c for c in shipped.catalog.controls if not c.domestic]
    schemes = [c.endpoint.scheme for c in abroad]
    # two operators each, so one operator's outage does not read as filtering
    assert schemes.count("stun") >= 2 and schemes.count("quic") >= 2
    assert "stun://stun.l.google.com:19302" in [c.url for c in abroad]


def test_russia_has_a_domestic_stun_control() -> None:
    loaded = catalog.load(SHIPPED, profile="ru")
    assert any(c.domestic and c.endpoint.scheme == "stun" for c in loaded.catalog.controls)


@pytest.mark.parametrize("path", [SHIPPED, *(catalog.profile_path(p)
                                             for p in catalog.profile_names())],
                         ids=lambda p: p.name)
def test_sources_cite_public_material(path: Path) -> None:
    # users have the catalog, not the project's design notes: a source must be one they can read
    assert "ENDPOINTS.md" not in path.read_text()


def test_need_default_documented_at_the_top() -> None:
    head = SHIPPED.read_text().split("\nversion: 1", 1)[0]
    assert "need: all   (the DEFAULT" in head and "need: any" in head


def test_known_traps_avoided(shipped: LoadedCatalog) -> None:
    for pid, _, _, t in all_targets(shipped):
        e = t.endpoint
        # WhatsApp chat is Noise, not TLS
        chat_host = e.host.startswith("e") and e.host.endswith(".whatsapp.net") \
            and e.host[1:-len(".whatsapp.net")].isdigit()
        if e.host == "g.whatsapp.net" or chat_host:
            assert e.scheme == "tcp", t.url
        # Telegram DCs are MTProto on IP literals, not TLS
        if pid == "telegram" and e.is_ip:
            assert e.scheme in ("tcp", "stun", "turn"), t.url
        # Signal's service hosts need Signal's own root
        if e.host.endswith(".signal.org") and e.scheme in ("tls", "https"):
            assert t.ca_file and Path(t.ca_file).name == "signal-root.pem", t.url
        # the SFU drops unauthenticated STUN
        assert not (e.host == "sfu.voip.signal.org" and e.scheme in ("stun", "turn"))
        # Discord voice servers do not speak STUN
        assert not (e.host.endswith("discord.media") and e.scheme in ("stun", "turn"))


def test_signal_targets_resolve_the_shipped_root(shipped: LoadedCatalog) -> None:
    jobs = [j for j in shipped.jobs({"signal"}) if j.platform == "signal"]
    with_ca = [j for j in jobs if j.ca_files]
    assert with_ca
    for job in with_ca:
        assert all(Path(f).is_file() for f in job.ca_files)
        assert Path(job.ca_files[-1]).resolve() == (DATA / "certs" / "signal-root.pem").resolve()


def signal_roots() -> list[Certificate]:
    """Every certificate of the Signal CA bundle, in file order."""
    from cryptography import x509

    return x509.load_pem_x509_certificates(SIGNAL_BUNDLE.read_bytes())


def test_every_signal_root_parses_and_is_self_signed() -> None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    roots = signal_roots()
    assert roots
    for cert in roots:
        org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
        assert org == "Signal Messenger, LLC" and cert.subject == cert.issuer
        # checks the signature with the certificate's own key, whatever its type (RSA, Ed25519):
        # a transcription error anywhere in a PEM block breaks it
        cert.verify_directly_issued_by(cert)
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        assert basic.ca


def test_signal_bundle_holds_the_2022_rsa_root() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_roots = [c for c in signal_roots() if isinstance(c.public_key(), rsa.RSAPublicKey)]
    assert [(c.not_valid_before_utc.year, c.not_valid_after_utc.year) for c in rsa_roots] == [
        (2022, 2032)]


def test_ssl_accepts_the_signal_bundle() -> None:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no system store: only the bundle counts
    context.load_verify_locations(str(SIGNAL_BUNDLE))
    assert len(context.get_ca_certs()) == len(signal_roots())


@pytest.mark.parametrize("profile", with_profiles())
def test_schema_accepts_the_shipped_files(profile: str | None) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from probe import yamlpos

    document = yamlpos.parse(SHIPPED.read_text(), "probes.yaml").document
    jsonschema.validate(document, catalog.json_schema())
    if profile:
        path = catalog.profile_path(profile)
        overlay = yamlpos.parse(path.read_text(), str(path)).document
        jsonschema.validate(overlay, catalog.json_schema("profile"))


def test_targets_view_lists_every_target_with_its_source(shipped: LoadedCatalog) -> None:
    rows = json.loads(targets_view.render_targets(shipped, "json"))
    every = all_targets(shipped)
    assert len(rows) == len(every)
    assert [r["url"] for r in rows] == [t.url for *_, t in every]
    assert all(r["source"] and r["source"].startswith("source:") for r in rows)
    assert set(rows[0]) == {"platform", "feature", "need", "url", "name", "source", "domestic"}
    tree = targets_view.render_targets(shipped, "tree", width=1000)
    for *_, t in every:
        assert t.url in tree
    assert "messaging (need any)" in tree and "WhatsApp (whatsapp)" in tree
    assert targets_view.summary(shipped).startswith(f"{shipped.path}: ok - 6 platforms")
