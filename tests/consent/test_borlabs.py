"""Borlabs Cookie: ``consents.<group>`` lists; a cookie without the service is a refusal."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest

from proxy.consent.borlabs import BorlabsOptions, compile_source
from proxy.consent.verdict import ConsentInput, Verdict
from proxy.ingest.cookies import parse_cookie_header

GRANT, DENY, ABSTAIN = Verdict.GRANT, Verdict.DENY, Verdict.ABSTAIN


def borlabs(consents: Any, encode: int = 1, **extra: Any) -> str:
    body = {"consents": consents, "domainPath": "example.org/", "uid": "abc", **extra}
    value = json.dumps(body, separators=(",", ":"))
    for _ in range(encode):
        value = quote(value, safe="")
    return f"borlabs-cookie={value}"


def verdict(header: str, **options: Any) -> Verdict:
    source = compile_source(BorlabsOptions(**options))
    return source(ConsentInput(cookies=parse_cookie_header(header), events=(), now=0.0))


ESSENTIAL = ["borlabs-cookie"]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (borlabs({"essential": ESSENTIAL, "statistics": ["google-analytics"]}), GRANT),
        (borlabs({"statistics": ["matomo", "google-analytics"]}, encode=0), GRANT),
        (borlabs({"statistics": ["google-analytics"]}, encode=2), GRANT),
        (borlabs({"statistics": ["google-analytics"]}, v3=True, version=1), GRANT),
        # Exists but lacks the service: a recorded choice, not an absence.
        (borlabs({"essential": ESSENTIAL}), DENY),
        (borlabs({"essential": ESSENTIAL, "statistics": []}), DENY),
        (borlabs({"essential": ESSENTIAL, "statistics": ["matomo"]}), DENY),
        (borlabs({"marketing": ["google-analytics"]}), DENY),
        (borlabs({}), DENY),
    ],
    ids=repr,
)
def test_service_in_the_group_grants_and_its_absence_denies(
    header: str, expected: Verdict
) -> None:
    assert verdict(header) is expected


@pytest.mark.parametrize(
    "header",
    [
        "",
        "borlabs-cookie=",
        "borlabs-cookie=garbage",
        "borlabs-cookie=%7B%7D",  # an object without consents is no Borlabs choice
        borlabs(["statistics"]),
        borlabs({"statistics": "google-analytics"}),
        borlabs(None),
        "borlabs-cookie=%5B%5D",
        "borlabs-cookie=%E2%28%A1",
    ],
    ids=repr,
)
def test_absent_or_undecodable_values_abstain(header: str) -> None:
    assert verdict(header) is ABSTAIN


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (borlabs({"statistics": ["google-analytics"]}) + "; " + borlabs({}), DENY),
        (borlabs({}) + "; " + borlabs({"statistics": ["google-analytics"]}), DENY),
        ("borlabs-cookie=junk; " + borlabs({"statistics": ["google-analytics"]}), GRANT),
    ],
    ids=repr,
)
def test_every_copy_counts_and_deny_wins(header: str, expected: Verdict) -> None:
    assert verdict(header) is expected


@pytest.mark.parametrize(
    ("consents", "options", "expected"),
    [
        ({"statistics": ["ga-four"]}, {"services": ("ga-four",)}, GRANT),
        ({"statistics": ["ga", "gtm"]}, {"services": ("ga", "gtm")}, GRANT),
        ({"statistics": ["ga"]}, {"services": ("ga", "gtm")}, DENY),
        ({"analytics": ["google-analytics"]}, {"group": "analytics"}, GRANT),
        ({"statistics": ["google-analytics"]}, {"group": "analytics"}, DENY),
    ],
    ids=repr,
)
def test_group_and_services_are_options(
    consents: dict[str, list[str]], options: dict[str, Any], expected: Verdict
) -> None:
    assert verdict(borlabs(consents), **options) is expected


def test_cookie_name_is_an_option() -> None:
    header = borlabs({"statistics": ["google-analytics"]}).replace("borlabs-cookie=", "bc=")
    assert verdict(header, cookie="bc") is GRANT
    assert verdict(header) is ABSTAIN


@pytest.mark.parametrize("options", [{"services": ()}, {"group": ""}, {"cookie": ""}])
def test_empty_options_fail_at_compile_time(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="borlabs"):
        compile_source(BorlabsOptions(**options))
