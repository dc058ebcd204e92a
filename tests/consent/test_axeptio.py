"""Axeptio: ``axeptio_cookies`` JSON keyed by vendor, ``$$completed`` as the action marker."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest

from proxy.consent.axeptio import AxeptioOptions, compile_source
from proxy.consent.verdict import ConsentInput, Verdict
from proxy.ingest.cookies import parse_cookie_header

GRANT, DENY, IMPLIED, ABSTAIN = Verdict.GRANT, Verdict.DENY, Verdict.IMPLIED, Verdict.ABSTAIN


def axeptio(vendors: dict[str, Any], encode: int = 1, **extra: Any) -> str:
    body = {"$$token": "z2k0mvsb9kx", "$$date": "2024-05-02T08:00:00.000Z", **vendors, **extra}
    value = json.dumps(body, separators=(",", ":"))
    for _ in range(encode):
        value = quote(value, safe="")
    return f"axeptio_cookies={value}"


def verdict(header: str, **options: Any) -> Verdict:
    source = compile_source(AxeptioOptions(**options))
    return source(ConsentInput(cookies=parse_cookie_header(header), events=(), now=0.0))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (axeptio({"google_analytics": True}, **{"$$completed": True}), GRANT),
        (axeptio({"google_analytics": True, "facebook_pixel": False}), GRANT),
        (axeptio({"google_analytics": True}, encode=0), GRANT),
        (axeptio({"google_analytics": True}, encode=2), GRANT),
        (axeptio({"google_analytics": False}, **{"$$completed": True}), DENY),
        (axeptio({"google_analytics": False}, **{"$$completed": False}), DENY),
    ],
    ids=repr,
)
def test_vendor_true_grants_and_false_denies(header: str, expected: Verdict) -> None:
    assert verdict(header) is expected


def test_an_unfinished_widget_makes_a_grant_implied() -> None:
    header = axeptio({"google_analytics": True}, **{"$$completed": False})
    assert verdict(header) is IMPLIED


@pytest.mark.parametrize(
    "header",
    [
        "",
        "axeptio_cookies=",
        "axeptio_cookies=garbage",
        "axeptio_cookies=%7B",
        "axeptio_cookies=%5B%5D",
        axeptio({}),
        axeptio({"facebook_pixel": True}),
        axeptio({"google_analytics": "true"}),
        axeptio({"google_analytics": 1}),
        "axeptio_authorized_vendors=%2Cgoogle_analytics%2C",
        "axeptio_cookies=%E2%28%A1",
    ],
    ids=repr,
)
def test_absent_or_undecodable_values_abstain(header: str) -> None:
    assert verdict(header) is ABSTAIN


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (axeptio({"google_analytics": True}) + "; " + axeptio({"google_analytics": False}), DENY),
        (axeptio({"google_analytics": False}) + "; " + axeptio({"google_analytics": True}), DENY),
        ("axeptio_cookies=junk; " + axeptio({"google_analytics": True}), GRANT),
    ],
    ids=repr,
)
def test_every_copy_counts_and_deny_wins(header: str, expected: Verdict) -> None:
    assert verdict(header) is expected


@pytest.mark.parametrize(
    ("vendors", "configured", "expected"),
    [
        ({"ga4": True}, ("ga4",), GRANT),
        ({"ga4": True, "gtm": True}, ("ga4", "gtm"), GRANT),
        ({"ga4": True, "gtm": False}, ("ga4", "gtm"), DENY),
        ({"ga4": True}, ("ga4", "gtm"), ABSTAIN),
    ],
    ids=repr,
)
def test_vendors_are_options(
    vendors: dict[str, bool], configured: tuple[str, ...], expected: Verdict
) -> None:
    assert verdict(axeptio(vendors), vendors=configured) is expected


def test_cookie_name_is_an_option() -> None:
    header = axeptio({"google_analytics": True}).replace("axeptio_cookies=", "ax=")
    assert verdict(header, cookie="ax") is GRANT
    assert verdict(header) is ABSTAIN


@pytest.mark.parametrize("options", [{"vendors": ()}, {"cookie": ""}])
def test_empty_options_fail_at_compile_time(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="axeptio"):
        compile_source(AxeptioOptions(**options))
