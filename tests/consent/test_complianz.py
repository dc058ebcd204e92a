"""Complianz: one plain ``allow``/``deny`` cookie per category under either prefix."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.consent.complianz import ComplianzOptions, compile_source
from proxy.consent.verdict import ConsentInput, Verdict
from proxy.ingest.cookies import parse_cookie_header

GRANT, DENY, ABSTAIN = Verdict.GRANT, Verdict.DENY, Verdict.ABSTAIN


def verdict(header: str, **options: Any) -> Verdict:
    source = compile_source(ComplianzOptions(**options))
    return source(ConsentInput(cookies=parse_cookie_header(header), events=(), now=0.0))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("cmplz_statistics=allow", GRANT),
        ("cmplz_rt_statistics=allow", GRANT),
        ("cmplz_statistics=ALLOW ", GRANT),
        ('cmplz_statistics="allow"', GRANT),
        ("cmplz_banner-status=dismissed; cmplz_marketing=deny; cmplz_statistics=allow", GRANT),
        ("cmplz_statistics=deny", DENY),
        ("cmplz_rt_statistics=deny", DENY),
        ("cmplz_marketing=allow; cmplz_statistics=deny", DENY),
    ],
    ids=repr,
)
def test_allow_grants_and_deny_denies(header: str, expected: Verdict) -> None:
    assert verdict(header) is expected


@pytest.mark.parametrize(
    "header",
    [
        "",
        "cmplz_banner-status=dismissed",
        "cmplz_marketing=allow",
        "cmplz_statistics=",
        "cmplz_statistics=yes",
        "cmplz_statistics=allowed",
        "cmplz_stats=allow",
        "cmplz_statistics-anonymous=allow",
        "cmplz_statistics=%E2%28%A1",
    ],
    ids=repr,
)
def test_absent_or_unknown_values_abstain(header: str) -> None:
    assert verdict(header) is ABSTAIN


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("cmplz_statistics=allow; cmplz_statistics=deny", DENY),
        ("cmplz_statistics=deny; cmplz_statistics=allow", DENY),
        # A stale copy under the other prefix still denies.
        ("cmplz_statistics=allow; cmplz_rt_statistics=deny", DENY),
        ("cmplz_rt_statistics=allow; cmplz_statistics=junk", GRANT),
    ],
    ids=repr,
)
def test_every_copy_under_every_prefix_counts(header: str, expected: Verdict) -> None:
    assert verdict(header) is expected


@pytest.mark.parametrize(
    ("header", "options", "expected"),
    [
        ("cmplz_marketing=allow; cmplz_statistics=deny", {"category": "marketing"}, GRANT),
        ("cmplz_rt_statistics=allow", {"prefixes": ("cmplz_",)}, ABSTAIN),
        ("site2_statistics=deny", {"prefixes": ("site2_",)}, DENY),
        ("cmplz_statistics=deny", {"prefixes": ("site2_",)}, ABSTAIN),
        ("cmplz_statistics=allow", {"prefixes": ("cmplz_", "cmplz_")}, GRANT),
    ],
    ids=repr,
)
def test_prefixes_and_category_are_options(
    header: str, options: dict[str, Any], expected: Verdict
) -> None:
    assert verdict(header, **options) is expected


@pytest.mark.parametrize("options", [{"prefixes": ()}, {"prefixes": ("",)}, {"category": ""}])
def test_empty_options_fail_at_compile_time(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="complianz"):
        compile_source(ComplianzOptions(**options))
