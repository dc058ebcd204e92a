"""cookieconsent (orestbida): v3 ``categories`` / v2 ``level`` lists, v3 expiry."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest

from proxy.consent.cookieconsent import CookieConsentOptions, compile_source
from proxy.consent.verdict import ConsentInput, Verdict
from proxy.ingest.cookies import parse_cookie_header

GRANT, DENY, ABSTAIN = Verdict.GRANT, Verdict.DENY, Verdict.ABSTAIN

NOW = 1_780_000_000.0
LATER_MS = int(NOW * 1000) + 86_400_000
EARLIER_MS = int(NOW * 1000) - 1


def v3(categories: Any, encode: int = 1, **extra: Any) -> str:
    body = {"categories": categories, "revision": 0, "data": None, "consentId": "x", **extra}
    value = json.dumps(body, separators=(",", ":"))
    for _ in range(encode):
        value = quote(value, safe="")
    return f"cc_cookie={value}"


def v2(level: Any, encode: int = 0) -> str:
    value = json.dumps({"level": level, "revision": 0, "data": None, "rfc_cookie": False})
    for _ in range(encode):
        value = quote(value, safe="")
    return f"cc_cookie={value}"


def verdict(header: str, **options: Any) -> Verdict:
    source = compile_source(CookieConsentOptions(**options))
    return source(ConsentInput(cookies=parse_cookie_header(header), events=(), now=NOW))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (v3(["necessary", "analytics"]), GRANT),
        (v3(["necessary", "analytics"], encode=0), GRANT),
        (v3(["necessary", "analytics"], encode=2), GRANT),
        (v3(["analytics"], expirationTime=LATER_MS), GRANT),
        (v2(["necessary", "analytics"]), GRANT),
        (v2(["necessary", "analytics"], encode=1), GRANT),
        # Exists without the category: a recorded refusal, not an absence.
        (v3(["necessary"]), DENY),
        (v3([]), DENY),
        (v3(["necessary"], expirationTime=LATER_MS), DENY),
        (v2(["necessary"]), DENY),
        (v2([]), DENY),
    ],
    ids=repr,
)
def test_category_present_grants_and_missing_denies(header: str, expected: Verdict) -> None:
    assert verdict(header) is expected


@pytest.mark.parametrize(
    "header",
    [
        v3(["analytics"], expirationTime=EARLIER_MS),
        v3(["necessary"], expirationTime=EARLIER_MS),
        v3(["analytics"], expirationTime=0),
    ],
    ids=repr,
)
def test_an_expired_choice_abstains(header: str) -> None:
    assert verdict(header) is ABSTAIN


@pytest.mark.parametrize(
    ("expiry", "expected"),
    [("2020-01-01", GRANT), (True, GRANT), (None, GRANT), (10**400, GRANT)],
    ids=repr,
)
def test_an_unusable_expiry_is_ignored(expiry: Any, expected: Verdict) -> None:
    assert verdict(v3(["analytics"], expirationTime=expiry)) is expected


@pytest.mark.parametrize(
    "header",
    [
        "",
        "cc_cookie=",
        "cc_cookie=garbage",
        "cc_cookie=%7B",
        "cc_cookie=%7B%7D",
        "cc_cookie=%5B%22analytics%22%5D",
        v3("analytics"),
        v3(None),
        v2({"analytics": True}),
        "cc_cookie=%E2%28%A1",
    ],
    ids=repr,
)
def test_absent_or_undecodable_values_abstain(header: str) -> None:
    assert verdict(header) is ABSTAIN


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (v3(["analytics"]) + "; " + v3(["necessary"]), DENY),
        (v2(["necessary"]) + "; " + v3(["analytics"]), DENY),
        ("cc_cookie=junk; " + v3(["analytics"]), GRANT),
        (v3(["analytics"], expirationTime=EARLIER_MS) + "; " + v3(["analytics"]), GRANT),
    ],
    ids=repr,
)
def test_every_copy_counts_and_deny_wins(header: str, expected: Verdict) -> None:
    assert verdict(header) is expected


@pytest.mark.parametrize(
    ("header", "options", "expected"),
    [
        (v3(["necessary", "measurement"]), {"categories": ("measurement",)}, GRANT),
        (v3(["necessary", "analytics"]), {"categories": ("measurement",)}, DENY),
        (v3(["analytics", "ads"]), {"categories": ("analytics", "ads")}, GRANT),
        (v3(["analytics"]), {"categories": ("analytics", "ads")}, DENY),
        (v3(["analytics"]).replace("cc_cookie=", "cc_v3="), {"cookie": "cc_v3"}, GRANT),
        (v3(["analytics"]), {"cookie": "cc_v3"}, ABSTAIN),
    ],
    ids=repr,
)
def test_cookie_and_category_names_are_options(
    header: str, options: dict[str, Any], expected: Verdict
) -> None:
    assert verdict(header, **options) is expected


@pytest.mark.parametrize("options", [{"categories": ()}, {"cookie": ""}])
def test_empty_options_fail_at_compile_time(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="cookieconsent"):
        compile_source(CookieConsentOptions(**options))
