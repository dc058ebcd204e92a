"""CookieYes: ``cookieyes-consent`` ``key:value`` pairs and the ``action`` marker."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from proxy.consent.cookieyes import CookieYesOptions, compile_source
from proxy.consent.verdict import ConsentInput, Verdict
from proxy.ingest.cookies import parse_cookie_header

GRANT, DENY, IMPLIED, ABSTAIN = Verdict.GRANT, Verdict.DENY, Verdict.IMPLIED, Verdict.ABSTAIN

ACCEPTED = "consentid:M1E3dFBS,consent:yes,action:yes,necessary:yes,analytics:yes,other:no"
REJECTED = "consentid:WHRLbHhJ,consent:no,action:yes,necessary:yes,analytics:no,other:no"


def verdict(header: str, **options: Any) -> Verdict:
    source = compile_source(CookieYesOptions(**options))
    return source(ConsentInput(cookies=parse_cookie_header(header), events=(), now=0.0))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"cookieyes-consent={ACCEPTED}", GRANT),
        (f"cookieyes-consent={quote(ACCEPTED, safe='')}", GRANT),
        (f"cookieyes-consent={quote(quote(ACCEPTED, safe=''), safe='')}", GRANT),
        ("cookieyes-consent=action:yes, analytics:YES ", GRANT),
        (f"cookieyes-consent={REJECTED}", DENY),
        ("cookieyes-consent=action:,analytics:no", DENY),
        ("cookieyes-consent=action:yes,analytics:yes,analytics:no", DENY),
    ],
    ids=repr,
)
def test_analytics_yes_grants_and_no_denies(header: str, expected: Verdict) -> None:
    assert verdict(header) is expected


@pytest.mark.parametrize(
    "header",
    [
        "cookieyes-consent=consentid:x,consent:yes,action:,analytics:yes",
        "cookieyes-consent=consentid:x,consent:yes,action:no,analytics:yes",
        "cookieyes-consent=consentid:x,consent:yes,analytics:yes",  # no action key at all
    ],
)
def test_grant_without_a_user_action_is_implied(header: str) -> None:
    assert verdict(header) is IMPLIED


@pytest.mark.parametrize(
    "header",
    [
        "",
        "cookieyes-consent=",
        "cookieyes-consent=garbage",
        "cookieyes-consent=action:yes,analytics:maybe",
        "cookieyes-consent=action:yes,analytics",
        "cookieyes-consent=action:yes,necessary:yes",
        "cookieyes-consent={\"analytics\":\"yes\"}",
        "CookieYes-Consent=action:yes,analytics:yes",
        "cookieyes-consent=%E2%28%A1",
    ],
    ids=repr,
)
def test_absent_or_undecodable_values_abstain(header: str) -> None:
    assert verdict(header) is ABSTAIN


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"cookieyes-consent={ACCEPTED}; cookieyes-consent={REJECTED}", DENY),
        (f"cookieyes-consent={REJECTED}; cookieyes-consent={ACCEPTED}", DENY),
        (f"cookieyes-consent=action:,analytics:yes; cookieyes-consent={ACCEPTED}", GRANT),
        ("cookieyes-consent=action:,analytics:yes; cookieyes-consent=junk", IMPLIED),
    ],
    ids=repr,
)
def test_every_copy_counts_and_deny_wins(header: str, expected: Verdict) -> None:
    assert verdict(header) is expected


@pytest.mark.parametrize(
    ("header", "options", "expected"),
    [
        (f"cookieyes-consent={ACCEPTED}", {"categories": ("other",)}, DENY),
        (f"cookieyes-consent={ACCEPTED}", {"categories": ("analytics", "necessary")}, GRANT),
        (f"cookieyes-consent={ACCEPTED}", {"categories": ("analytics", "performance")}, ABSTAIN),
        (f"cookieyes-consent={ACCEPTED}", {"categories": ("analytics", "other")}, DENY),
        (f"cky={ACCEPTED}", {"cookie": "cky"}, GRANT),
        (f"cookieyes-consent={ACCEPTED}", {"cookie": "cky"}, ABSTAIN),
    ],
    ids=repr,
)
def test_cookie_and_category_names_are_options(
    header: str, options: dict[str, Any], expected: Verdict
) -> None:
    assert verdict(header, **options) is expected


@pytest.mark.parametrize("options", [{"categories": ()}, {"cookie": ""}])
def test_empty_options_fail_at_compile_time(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="cookieyes"):
        compile_source(CookieYesOptions(**options))
