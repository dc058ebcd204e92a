"""Klaro: ``klaro`` percent-encoded JSON of service -> bool, all configured services."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest

from proxy.consent.klaro import KlaroOptions, compile_source
from proxy.consent.verdict import ConsentInput, Verdict
from proxy.ingest.cookies import parse_cookie_header

GRANT, DENY, ABSTAIN = Verdict.GRANT, Verdict.DENY, Verdict.ABSTAIN


def klaro(services: dict[str, Any], encode: int = 1) -> str:
    value = json.dumps(services, separators=(",", ":"))
    for _ in range(encode):
        value = quote(value, safe="")
    return f"klaro={value}"


def verdict(header: str, **options: Any) -> Verdict:
    source = compile_source(KlaroOptions(**options))
    return source(ConsentInput(cookies=parse_cookie_header(header), events=(), now=0.0))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (klaro({"necessary-cookies": True, "google-analytics": True}), GRANT),
        (klaro({"google-analytics": True}, encode=0), GRANT),
        (klaro({"google-analytics": True}, encode=2), GRANT),
        (klaro({"google-analytics": False, "google-ads": True}), DENY),
        (klaro({"google-analytics": False}, encode=0), DENY),
    ],
    ids=repr,
)
def test_service_true_grants_and_false_denies(header: str, expected: Verdict) -> None:
    assert verdict(header) is expected


@pytest.mark.parametrize(
    "header",
    [
        "",
        "klaro=",
        "klaro=garbage",
        "klaro=%7B",
        "klaro=%5Btrue%5D",  # a JSON array, not an object
        klaro({"googleAnalytics": True}),  # the site calls it something else
        klaro({"google-analytics": "true"}),
        klaro({"google-analytics": 1}),
        klaro({"google-analytics": None}),
        "klaro=" + "%5B" * 5000,
        "klaro=%E2%28%A1",
    ],
    ids=lambda value: repr(value)[:60],
)
def test_absent_or_undecodable_values_abstain(header: str) -> None:
    assert verdict(header) is ABSTAIN


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (klaro({"google-analytics": True}) + "; " + klaro({"google-analytics": False}), DENY),
        (klaro({"google-analytics": False}) + "; " + klaro({"google-analytics": True}), DENY),
        ("klaro=junk; " + klaro({"google-analytics": True}), GRANT),
    ],
    ids=repr,
)
def test_every_copy_counts_and_deny_wins(header: str, expected: Verdict) -> None:
    assert verdict(header) is expected


@pytest.mark.parametrize(
    ("services", "configured", "expected"),
    [
        ({"ga": True, "gtm": True}, ("ga", "gtm"), GRANT),
        ({"ga": True, "gtm": False}, ("ga", "gtm"), DENY),
        ({"ga": True}, ("ga", "gtm"), ABSTAIN),  # not every configured service is recorded
        ({"ga": False}, ("ga", "gtm"), DENY),
        ({"googleAnalytics": True}, ("googleAnalytics",), GRANT),
    ],
    ids=repr,
)
def test_every_configured_service_must_be_true(
    services: dict[str, bool], configured: tuple[str, ...], expected: Verdict
) -> None:
    assert verdict(klaro(services), services=configured) is expected


def test_cookie_name_is_an_option() -> None:
    header = klaro({"google-analytics": True}).replace("klaro=", "consent=")
    assert verdict(header, cookie="consent") is GRANT
    assert verdict(header) is ABSTAIN


@pytest.mark.parametrize("options", [{"services": ()}, {"services": ("",)}, {"cookie": ""}])
def test_empty_options_fail_at_compile_time(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="klaro"):
        compile_source(KlaroOptions(**options))
