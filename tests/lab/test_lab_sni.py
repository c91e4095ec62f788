"""Lab: a DPI censor keyed on the TLS SNI (string match on the ClientHello), dropping the flow or
answering it with a RST; the probe's SNI swap must name it `tls.sni_filtered`."""

from __future__ import annotations

import pytest
from netns import SERVER_IP
from scenario import Lab, MakeLab, expect, expect_clean_baseline, server, target

pytestmark = pytest.mark.lab

BLOCKED = "blocked.lab.test"
SNI_FILTERED = ("blocked", "tls.sni_filtered")


@pytest.fixture(scope="module")
def lab(make_lab: MakeLab) -> Lab:
    servers = [
        server("blocked", "tls", name=BLOCKED),
        server("blockedweb", "https", name=BLOCKED),
        server("free", "tls", name="free.lab.test"),
        server("page", "https", name="page.lab.test"),
    ]

    def targets(ports: dict[str, int]) -> list[dict[str, object]]:
        return [
            target("blocked", f"tls://{BLOCKED}:{ports['blocked']}", address=SERVER_IP),
            target("blockedweb", f"https://{BLOCKED}:{ports['blockedweb']}/", address=SERVER_IP),
            target("free", f"tls://free.lab.test:{ports['free']}", address=SERVER_IP),
            target("page", f"https://page.lab.test:{ports['page']}/", address=SERVER_IP),
        ]

    return make_lab(servers, targets)


def _sni_match() -> list[str]:
    # nft cannot search a payload for a string; iptables' string match (xt_string) can.
    return ["-p", "tcp", "-m", "string", "--algo", "bm", "--string", BLOCKED]


def test_baseline_without_rules_is_clean(lab: Lab) -> None:
    expect_clean_baseline(lab)


def test_sni_silently_dropped_is_sni_filtered(lab: Lab) -> None:
    run = lab.run(iptables=[[*_sni_match(), "-j", "DROP"]])
    expect(lab, run, {"blocked": SNI_FILTERED, "blockedweb": SNI_FILTERED})


def test_sni_answered_with_rst_is_sni_filtered(lab: Lab) -> None:
    run = lab.run(iptables=[[*_sni_match(), "-j", "REJECT", "--reject-with", "tcp-reset"]])
    expect(lab, run, {"blocked": SNI_FILTERED, "blockedweb": SNI_FILTERED})
