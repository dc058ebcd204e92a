"""The Cookie header: every line read, and a header too large or undecodable refused."""

from __future__ import annotations

import pytest

from proxy.ingest.cookies import (
    MAX_COOKIE_HEADER,
    UnreadableCookie,
    join_cookie_lines,
    parse_cookie_header,
)

GRANTED = "analytics_consent=granted"
DENIED = "analytics_consent=denied"


@pytest.mark.parametrize(
    ("lines", "joined"),
    [
        ([], None),
        ([""], None),
        ([GRANTED], GRANTED),
        ([GRANTED, DENIED], f"{GRANTED}; {DENIED}"),
        (["", GRANTED, "", "a=1; b=2"], f"{GRANTED}; a=1; b=2"),
    ],
)
def test_every_cookie_line_is_joined_into_one_header(
    lines: list[str], joined: str | None
) -> None:
    assert join_cookie_lines(lines) == joined


def test_a_name_in_two_lines_keeps_both_copies() -> None:
    jar = parse_cookie_header(join_cookie_lines([GRANTED, DENIED]))
    assert jar["analytics_consent"] == ["granted", "denied"]


def test_a_header_of_exactly_the_limit_is_read() -> None:
    header = f"{GRANTED}; pad=" + "x" * (MAX_COOKIE_HEADER - len(GRANTED) - 6)
    assert len(header) == MAX_COOKIE_HEADER
    assert parse_cookie_header(header)["analytics_consent"] == ["granted"]


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (f"{DENIED}; pad=" + "x" * MAX_COOKIE_HEADER, "cookie_too_large"),
        # Counted in bytes: 8,193 two-byte characters are over 16 KiB though fewer characters.
        (f"{DENIED}; pad=" + "é" * (MAX_COOKIE_HEADER // 2), "cookie_too_large"),
        # Invalid UTF-8 reaches the proxy as lone surrogates (aiohttp's surrogateescape).
        (f"{DENIED}; x=\udcff\udcfe", "cookie_undecodable"),
    ],
    ids=["too large", "too large in bytes", "undecodable"],
)
def test_an_unreadable_header_raises_with_a_code_never_the_value(header: str, code: str) -> None:
    with pytest.raises(UnreadableCookie) as caught:
        parse_cookie_header(header)
    assert str(caught.value) == code
