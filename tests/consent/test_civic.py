"""Civic Cookie Control: ``optionalCookies`` states, ``interactedWith``, stale choices."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest

from proxy.consent.civic import CivicOptions, compile_source, is_expired
from proxy.consent.verdict import ConsentInput, Verdict
from proxy.ingest.cookies import parse_cookie_header

GRANT, DENY, IMPLIED, ABSTAIN = Verdict.GRANT, Verdict.DENY, Verdict.IMPLIED, Verdict.ABSTAIN

NOW = 1_780_000_000.0  # epoch seconds
DAY_MS = 86_400_000
RECENT = int(NOW * 1000) - 10 * DAY_MS


def civic(optional: Any, encode: int = 0, **extra: Any) -> str:
    body = {"necessaryCookies": [], "optionalCookies": optional, "statement": {}, **extra}
    value = json.dumps(body, separators=(",", ":"))
    for _ in range(encode):
        value = quote(value, safe="")
    return f"CookieControl={value}"


def verdict(header: str, now: float = NOW, **options: Any) -> Verdict:
    source = compile_source(CivicOptions(**options))
    return source(ConsentInput(cookies=parse_cookie_header(header), events=(), now=now))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (civic({"analytics": "accepted"}, interactedWith=True), GRANT),
        (civic({"analytics": "accepted", "marketing": "revoked"}), GRANT),
        (civic({"analytics": "accepted"}, encode=1), GRANT),
        (civic({"analytics": "accepted"}, encode=2), GRANT),
        (civic({"analytics": "accepted"}, note="100%25 sure"), GRANT),  # raw, % kept as sent
        (civic({"analytics": "revoked"}, consentExpiry=90, interactedWith=True), DENY),
        (civic({"analytics": "revoked"}, interactedWith=False), DENY),
        (civic({"analytics": "revoked"}, encode=1), DENY),
    ],
    ids=repr,
)
def test_accepted_grants_and_revoked_denies(header: str, expected: Verdict) -> None:
    assert verdict(header) is expected


def test_an_accepted_category_without_interaction_is_implied() -> None:
    assert verdict(civic({"analytics": "accepted"}, interactedWith=False)) is IMPLIED


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"consentDate": RECENT, "consentExpiry": 90}, GRANT),
        ({"consentDate": RECENT, "consentExpiry": 5}, ABSTAIN),
        ({"consentDate": RECENT / 1, "consentExpiry": 9.5}, ABSTAIN),
        ({"consentDate": RECENT, "consentExpiry": 10.5}, GRANT),
        ({"consentExpiry": 0}, GRANT),  # no date: never treated as expired
        ({"consentDate": RECENT}, GRANT),  # no expiry
        ({"consentDate": "2025-01-01", "consentExpiry": 1}, GRANT),  # not a usable date
        ({"consentDate": True, "consentExpiry": True}, GRANT),
        ({"consentDate": 1.5, "consentExpiry": 10**400}, GRANT),  # overflow: not usable
    ],
    ids=repr,
)
def test_a_choice_past_its_expiry_abstains(extra: dict[str, Any], expected: Verdict) -> None:
    assert verdict(civic({"analytics": "accepted"}, **extra)) is expected


def test_an_expired_refusal_abstains_too() -> None:
    header = civic({"analytics": "revoked"}, consentDate=RECENT, consentExpiry=1)
    assert verdict(header) is ABSTAIN
    assert verdict(header, now=RECENT / 1000) is DENY


@pytest.mark.parametrize(
    "header",
    [
        "",
        "CookieControl=",
        "CookieControl={",
        "CookieControl=garbage",
        "CookieControl=[]",
        civic(None),
        civic(["analytics"]),
        civic({}),
        civic({"marketing": "accepted"}),
        civic({"analytics": "maybe"}),
        civic({"analytics": True}),
        "CookieControl=" + "[" * 5000,
        "CookieControl=%E2%28%A1",
    ],
    ids=lambda value: repr(value)[:60],
)
def test_absent_or_undecodable_values_abstain(header: str) -> None:
    assert verdict(header) is ABSTAIN


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (civic({"analytics": "accepted"}) + "; " + civic({"analytics": "revoked"}), DENY),
        (civic({"analytics": "revoked"}) + "; " + civic({"analytics": "accepted"}), DENY),
        ("CookieControl=junk; " + civic({"analytics": "accepted"}), GRANT),
        (civic({"analytics": "accepted"}, interactedWith=False) + "; CookieControl=x", IMPLIED),
    ],
    ids=repr,
)
def test_every_copy_counts_and_deny_wins(header: str, expected: Verdict) -> None:
    assert verdict(header) is expected


@pytest.mark.parametrize(
    ("optional", "options", "expected"),
    [
        ({"stats": "accepted"}, {"categories": ("stats",)}, GRANT),
        ({"stats": "accepted", "ga": "accepted"}, {"categories": ("stats", "ga")}, GRANT),
        ({"stats": "accepted", "ga": "revoked"}, {"categories": ("stats", "ga")}, DENY),
        ({"stats": "accepted"}, {"categories": ("stats", "ga")}, ABSTAIN),
    ],
    ids=repr,
)
def test_categories_are_options(
    optional: dict[str, str], options: dict[str, Any], expected: Verdict
) -> None:
    assert verdict(civic(optional), **options) is expected


def test_cookie_name_is_an_option() -> None:
    header = civic({"analytics": "accepted"}).replace("CookieControl=", "CC=")
    assert verdict(header, cookie="CC") is GRANT
    assert verdict(header) is ABSTAIN


def test_expiry_needs_both_fields() -> None:
    assert not is_expired({}, NOW)
    assert is_expired({"consentDate": 0, "consentExpiry": 1}, NOW)


@pytest.mark.parametrize("options", [{"categories": ()}, {"cookie": ""}])
def test_empty_options_fail_at_compile_time(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="civic"):
        compile_source(CivicOptions(**options))
