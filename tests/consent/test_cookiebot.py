"""Cookiebot: ``CookieConsent`` JS object literals, the no-action markers, every copy."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from proxy.consent.cookiebot import CookiebotOptions, compile_source, parse_object_literal
from proxy.consent.verdict import ConsentInput, Verdict
from proxy.ingest.cookies import parse_cookie_header

GRANT, DENY, IMPLIED, ABSTAIN = Verdict.GRANT, Verdict.DENY, Verdict.IMPLIED, Verdict.ABSTAIN

EXPLICIT_YES = "{stamp:'e98aHKJp+BGx/mrz==',necessary:true,statistics:true,marketing:false,ver:1}"
EXPLICIT_NO = "{stamp:'xGChaLlx+Wj4/7cm==',necessary:true,statistics:false,marketing:true,ver:1}"


def verdict(header: str, **options: Any) -> Verdict:
    source = compile_source(CookiebotOptions(**options))
    return source(ConsentInput(cookies=parse_cookie_header(header), events=(), now=0.0))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"CookieConsent={EXPLICIT_YES}", GRANT),
        (f"CookieConsent={quote(EXPLICIT_YES, safe='{}:')}", GRANT),
        (f"CookieConsent={quote(quote(EXPLICIT_YES, safe=''), safe='')}", GRANT),
        ("CookieConsent={stamp:'a',statistics:true,method:'explicit',region:'de'}", GRANT),
        ("CookieConsent={ stamp : 'a' , statistics : true }", GRANT),
        ("CookieConsent={\"stamp\":\"a\",\"statistics\":true}", GRANT),  # quoted keys tolerated
        ("CookieConsent={stamp:'it, has: commas}',statistics:true}", GRANT),
        ("_ga=GA1.2.3.4; CookieConsent={statistics:true}; other=x", GRANT),
        (f"CookieConsent={EXPLICIT_NO}", DENY),
        (f"CookieConsent={quote(EXPLICIT_NO, safe='')}", DENY),
        ("CookieConsent={stamp:'-1',statistics:false}", DENY),
        ("CookieConsent={statistics:false,method:'implied'}", DENY),
    ],
    ids=repr,
)
def test_statistics_true_grants_and_false_denies(header: str, expected: Verdict) -> None:
    assert verdict(header) is expected


@pytest.mark.parametrize(
    "header",
    [
        "CookieConsent=-1",
        "CookieConsent= -1 ",
        "CookieConsent={stamp:'-1',necessary:true,statistics:true,ver:1}",
        "CookieConsent={stamp:'a',statistics:true,method:'implied'}",
        "CookieConsent=%7Bstamp%3A%27-1%27%2Cstatistics%3Atrue%7D",
    ],
)
def test_no_user_action_markers_make_a_grant_implied(header: str) -> None:
    assert verdict(header) is IMPLIED


@pytest.mark.parametrize(
    "header",
    [
        "",
        "_ga=GA1.2.3.4",
        "cookieconsent={statistics:true}",  # names are case-sensitive
        "CookieConsent=",
        "CookieConsent=0",
        "CookieConsent={}",
        "CookieConsent={necessary:true}",
        "CookieConsent={statistics:maybe}",
        "CookieConsent={statistics:}",
        "CookieConsent={statistics:true",
        "CookieConsent={statistics:true}trailing",
        "CookieConsent={stamp:'unterminated,statistics:true}",
        "CookieConsent=statistics:true",
        "CookieConsent=%7B%7B%7B",
        "CookieConsent=%E2%28%A1",
        "CookieConsent={statistics:true,,}",
        "CookieConsent={1statistics:true}",
    ],
    ids=repr,
)
def test_absent_or_undecodable_values_abstain(header: str) -> None:
    assert verdict(header) is ABSTAIN


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"CookieConsent={EXPLICIT_YES}; CookieConsent={EXPLICIT_NO}", DENY),
        (f"CookieConsent={EXPLICIT_NO}; CookieConsent={EXPLICIT_YES}", DENY),
        (f"CookieConsent=-1; CookieConsent={EXPLICIT_YES}", GRANT),
        (f"CookieConsent=-1; CookieConsent={EXPLICIT_NO}", DENY),
        ("CookieConsent=garbage; CookieConsent=-1", IMPLIED),
        (f"CookieConsent=garbage; CookieConsent={EXPLICIT_YES}", GRANT),
        ("CookieConsent=garbage; CookieConsent={oops", ABSTAIN),
    ],
    ids=repr,
)
def test_every_copy_counts_and_deny_wins(header: str, expected: Verdict) -> None:
    assert verdict(header) is expected


@pytest.mark.parametrize(
    ("header", "options", "expected"),
    [
        (f"CookieConsent={EXPLICIT_YES}", {"category": "marketing"}, DENY),
        (f"CookieConsent={EXPLICIT_NO}", {"category": "marketing"}, GRANT),
        (f"CookieConsent={EXPLICIT_YES}", {"category": "preferences"}, ABSTAIN),
        (f"CbConsent={EXPLICIT_YES}", {"cookie": "CbConsent"}, GRANT),
        (f"CookieConsent={EXPLICIT_YES}", {"cookie": "CbConsent"}, ABSTAIN),
    ],
    ids=repr,
)
def test_cookie_and_category_names_are_options(
    header: str, options: dict[str, Any], expected: Verdict
) -> None:
    assert verdict(header, **options) is expected


@pytest.mark.parametrize("options", [{"cookie": ""}, {"category": ""}])
def test_empty_names_fail_at_compile_time(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="cookiebot"):
        compile_source(CookiebotOptions(**options))


def test_object_literal_keeps_quoted_strings_whole() -> None:
    assert parse_object_literal("{stamp:'a,b:c',ver:1,region:\"de\"}") == {
        "stamp": "a,b:c",
        "ver": "1",
        "region": "de",
    }
