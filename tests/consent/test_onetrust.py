"""OneTrust: ``OptanonConsent`` form fields, configured groups, the user-action markers."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from proxy.consent.onetrust import OneTrustOptions, compile_source, group_states, parse_fields
from proxy.consent.verdict import ConsentInput, Verdict
from proxy.ingest.cookies import parse_cookie_header

GRANT, DENY, IMPLIED, ABSTAIN = Verdict.GRANT, Verdict.DENY, Verdict.IMPLIED, Verdict.ABSTAIN

DATESTAMP = "datestamp=Wed+Feb+01+2023+12%3A35%3A32+GMT%2B0100+(Central+European+Standard+Time)"
ALERT = "OptanonAlertBoxClosed=2023-02-01T11:35:32.123Z"


def consent(groups: str, interaction: str | None = "1", extra: str = "") -> str:
    fields = ["isGpcEnabled=0", DATESTAMP, "version=202209.1.0"]
    if interaction is not None:
        fields.append(f"interactionCount={interaction}")
    fields.append("groups=" + quote(groups, safe=""))
    return "OptanonConsent=" + "&".join(fields) + extra


def verdict(header: str, **options: Any) -> Verdict:
    source = compile_source(OneTrustOptions(**options))
    return source(ConsentInput(cookies=parse_cookie_header(header), events=(), now=0.0))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (consent("C0001:1,C0002:1,C0003:1"), GRANT),
        (consent("C0001:1,C0002:1", interaction="3"), GRANT),
        (consent("C0001:1,C0002:0,C0003:1"), DENY),
        (consent("C0002:0"), DENY),
        (consent("C0001:1,C0002:0", interaction="0"), DENY),
        (consent("C0001:1, C0002:1 "), GRANT),
        (consent("C0001:1,C0002:1") + "&AwaitingReconsent=false", GRANT),
        # An encoded & inside a field stays data and does not split the value.
        (consent("C0001:1,C0002:1") + "&landingPath=%2Fa%26groups%3DC0002%3A0", GRANT),
        # Encoded once more as a whole: + is still the inner layer's space.
        ("OptanonConsent=" + quote(consent("C0002:1")[15:], safe=""), GRANT),
        ("OptanonConsent=" + quote(consent("C0002:0")[15:], safe=""), DENY),
        (consent("C0001:1,C0002:1,C0002:0"), DENY),  # a contradictory group denies
    ],
    ids=repr,
)
def test_configured_group_state_decides(header: str, expected: Verdict) -> None:
    assert verdict(header) is expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (consent("C0001:1,C0002:1", interaction="0"), IMPLIED),
        (consent("C0001:1,C0002:1", interaction="0") + "; " + ALERT, GRANT),
        (consent("C0001:1,C0002:1", interaction="1") + "; " + ALERT, GRANT),
        # Legacy cookies without interactionCount: only the alert cookie shows a choice.
        (consent("C0001:1,C0002:1", interaction=None), IMPLIED),
        (consent("C0001:1,C0002:1", interaction=None) + "; " + ALERT, GRANT),
        (consent("C0001:1,C0002:1", interaction="x"), IMPLIED),
        (consent("C0001:1,C0002:1", interaction="000"), IMPLIED),
        (consent("C0001:1,C0002:1", interaction="9" * 5000), GRANT),
        (consent("C0001:1,C0002:1", interaction="0") + "; OptanonAlertBoxClosed=", IMPLIED),
    ],
    ids=lambda value: repr(value)[:80],
)
def test_grant_without_a_recorded_interaction_is_implied(header: str, expected: Verdict) -> None:
    assert verdict(header) is expected


@pytest.mark.parametrize(
    "header",
    [
        "",
        ALERT,
        "OptanonConsent=",
        "OptanonConsent=garbage",
        "OptanonConsent=groups=",
        consent("C0001:1,C0003:1"),  # the analytics group is not on this site's banner
        consent("C0001:1,C0002:2"),
        consent("C0001:1,C0002"),
        consent("C00021"),
        "OptanonConsent=%ZZ%",
        "OptanonConsent=groups%3DC0002",
        "OptanonConsent=&&&==&",
    ],
    ids=repr,
)
def test_absent_or_undecodable_values_abstain(header: str) -> None:
    assert verdict(header) is ABSTAIN


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (consent("C0002:1") + "; " + consent("C0002:0"), DENY),
        (consent("C0002:0") + "; " + consent("C0002:1"), DENY),
        (consent("C0002:1", interaction="0") + "; " + consent("C0002:1"), GRANT),
        (consent("C0002:1", interaction="0") + "; OptanonConsent=junk", IMPLIED),
        ("OptanonConsent=junk; " + consent("C0002:1"), GRANT),
    ],
    ids=lambda value: repr(value)[:80],
)
def test_every_copy_counts_and_deny_wins(header: str, expected: Verdict) -> None:
    assert verdict(header) is expected


@pytest.mark.parametrize(
    ("header", "options", "expected"),
    [
        (consent("1:1,2:1,3:0"), {"groups": ("2",)}, GRANT),  # legacy numeric ids
        (consent("1:1,2:1,3:0"), {"groups": ("2", "3")}, DENY),
        (consent("C0002:1,C0004:1"), {"groups": ("C0002", "C0004")}, GRANT),
        (consent("C0002:1"), {"groups": ("C0002", "C0004")}, ABSTAIN),
        (consent("C0002:1", interaction="0") + "; Closed=1", {"alert_cookie": "Closed"}, GRANT),
        (consent("C0002:1", interaction="0") + "; " + ALERT, {"alert_cookie": "Closed"}, IMPLIED),
        (consent("C0002:1").replace("OptanonConsent", "OTC"), {"cookie": "OTC"}, GRANT),
        (consent("C0002:1"), {"cookie": "OTC"}, ABSTAIN),
    ],
    ids=lambda value: repr(value)[:80],
)
def test_cookie_and_group_names_are_options(
    header: str, options: dict[str, Any], expected: Verdict
) -> None:
    assert verdict(header, **options) is expected


@pytest.mark.parametrize("options", [{"groups": ()}, {"groups": ("",)}, {"cookie": ""}])
def test_empty_options_fail_at_compile_time(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="onetrust"):
        compile_source(OneTrustOptions(**options))


def test_fields_are_form_decoded_with_plus_as_space() -> None:
    fields = parse_fields(consent("C0002:1")[len("OptanonConsent="):])
    assert fields["datestamp"].startswith("Wed Feb 01 2023 12:35:32 GMT+0100")
    assert group_states(fields["groups"]) == {"C0002": {True}}
