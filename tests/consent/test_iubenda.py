"""iubenda: ``_iub_cs-<siteId>`` JSON, ``purposes["4"]``, the ``consent`` shortcut."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest

from proxy.consent.iubenda import IubendaOptions, compile_source, is_consent_cookie
from proxy.consent.verdict import ConsentInput, Verdict
from proxy.ingest.cookies import parse_cookie_header

GRANT, DENY, ABSTAIN = Verdict.GRANT, Verdict.DENY, Verdict.ABSTAIN


def iub(body: Any, name: str = "_iub_cs-50053366", encode: int = 1) -> str:
    value = json.dumps(body, separators=(",", ":"))
    for _ in range(encode):
        value = quote(value, safe="")
    return f"{name}={value}"


def verdict(header: str, **options: Any) -> Verdict:
    source = compile_source(IubendaOptions(**options))
    return source(ConsentInput(cookies=parse_cookie_header(header), events=(), now=0.0))


STAMP = {"timestamp": "2025-02-05T15:40:00.391Z", "version": "1.75.1", "id": 50053366}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (iub({**STAMP, "purposes": {"1": True, "3": True, "4": True}}), GRANT),
        (iub({**STAMP, "purposes": {"4": True}}, encode=0), GRANT),
        (iub({**STAMP, "purposes": {"4": True}}, encode=2), GRANT),
        (iub({**STAMP, "purposes": {"1": True, "4": False}}), DENY),
        (iub({**STAMP, "purposes": {"4": False}, "consent": True}), DENY),
        (iub({**STAMP, "purposes": {"4": True}, "consent": False}), GRANT),
        (iub({**STAMP, "consent": True}), GRANT),  # accept-all without per-purpose choices
        (iub({**STAMP, "consent": False}), DENY),
        (iub({**STAMP, "purposes": {"1": True}, "consent": False}), DENY),
    ],
    ids=repr,
)
def test_measurement_purpose_or_consent_shortcut_decides(header: str, expected: Verdict) -> None:
    assert verdict(header) is expected


@pytest.mark.parametrize(
    "header",
    [
        "",
        iub({"id": 90483436}),  # a visit recorded, no choice yet
        iub({**STAMP, "purposes": {"1": True, "3": True}}),
        iub({**STAMP, "purposes": {"1": True}, "consent": True}),
        iub({**STAMP, "purposes": {"4": "true"}}),
        iub({**STAMP, "purposes": ["4"]}),
        iub({**STAMP, "consent": "yes"}),
        "_iub_cs-1=",
        "_iub_cs-1=garbage",
        "_iub_cs-1=%7B",
        "_iub_cs-1=%E2%28%A1",
        # Other frameworks' state under a longer name is never read as consent.
        iub({"s": True, "sh": True, "adv": True, "purposes": {"4": True}}, "_iub_cs-1-uspr"),
        iub({**STAMP, "purposes": {"4": True}}, name="_iub_cs-"),
        iub({**STAMP, "purposes": {"4": True}}, name="_iub_previous_preference_id"),
        iub({**STAMP, "purposes": {"4": True}}, name="x_iub_cs-1"),
    ],
    ids=repr,
)
def test_absent_undecodable_or_choiceless_values_abstain(header: str) -> None:
    assert verdict(header) is ABSTAIN


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # Two sites' cookies on a shared domain, or two copies: any refusal wins.
        (iub({"purposes": {"4": True}}, "_iub_cs-1") + "; "
         + iub({"purposes": {"4": False}}, "_iub_cs-2"), DENY),
        (iub({"purposes": {"4": True}}, "_iub_cs-1") + "; "
         + iub({"purposes": {"4": False}}, "_iub_cs-1"), DENY),
        (iub({"id": 1}, "_iub_cs-1") + "; " + iub({"purposes": {"4": True}}, "_iub_cs-2"), GRANT),
        (iub({"purposes": {"4": True}}, "_iub_cs-1") + "; "
         + iub({"purposes": {"4": False}}, "_iub_cs-1-uspr"), GRANT),
    ],
    ids=repr,
)
def test_every_matching_cookie_counts_and_deny_wins(header: str, expected: Verdict) -> None:
    assert verdict(header) is expected


@pytest.mark.parametrize(
    ("header", "options", "expected"),
    [
        (iub({"purposes": {"4": False, "5": True}}), {"purpose": "5"}, GRANT),
        (iub({"purposes": {"4": True}}, "iub-7"), {"cookie_prefix": "iub-"}, GRANT),
        (iub({"purposes": {"4": True}}), {"cookie_prefix": "iub-"}, ABSTAIN),
    ],
    ids=repr,
)
def test_prefix_and_purpose_are_options(
    header: str, options: dict[str, Any], expected: Verdict
) -> None:
    assert verdict(header, **options) is expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("_iub_cs-50053366", True),
        ("_iub_cs-s1", True),
        ("_iub_cs-50053366-uspr", False),
        ("_iub_cs-50053366-granular", False),
        ("_iub_cs-", False),
        ("_iub_cs", False),
    ],
)
def test_consent_cookie_names(name: str, expected: bool) -> None:
    assert is_consent_cookie(name, "_iub_cs-") is expected


@pytest.mark.parametrize("options", [{"cookie_prefix": ""}, {"purpose": ""}])
def test_empty_options_fail_at_compile_time(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="iubenda"):
        compile_source(IubendaOptions(**options))
