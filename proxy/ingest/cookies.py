"""Cookie header parsing by hand (consent-signals.md §2).

The standard library's cookie parser (``http.cookies``) returns an empty jar for a whole
header as soon as one cookie holds raw JSON, which would silently lose every consent cookie
next to it.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote, unquote_plus

# A Cookie header larger than this (bytes, all its lines together) is not a browser's: it is
# refused, never parsed.
MAX_COOKIE_HEADER = 16 * 1024

CookieJar = dict[str, list[str]]


class UnreadableCookie(ValueError):
    """A Cookie header the proxy refuses to read. Unread, it could hide a denial, so the
    beacon is dropped (``consent_error``): it never counts as "no cookie". The message is a
    reason code, never the header."""


def join_cookie_lines(lines: Iterable[str]) -> str | None:
    """Every ``Cookie`` header line of a request as one header, or None when there is none.

    A browser sends one line, but HTTP/2 and some intermediaries split it (RFC 9113 §8.2.3):
    the lines are joined with "; " so that a denial in any of them is read.
    """
    found = [line for line in lines if line]
    return "; ".join(found) if found else None


def parse_cookie_header(header: str | None) -> CookieJar:
    """Split a Cookie header into ``name -> [raw values]``, keeping every copy of a name.

    Values are returned raw (not unquoted): each consent source knows its own encoding.
    Raises ``UnreadableCookie`` for a header over ``MAX_COOKIE_HEADER`` bytes or one that is
    not UTF-8 (the server hands undecodable bytes on as lone surrogates).
    """
    jar: CookieJar = {}
    if not header:
        return jar
    try:
        size = len(header) if header.isascii() else len(header.encode("utf-8"))
    except UnicodeEncodeError:
        raise UnreadableCookie("cookie_undecodable") from None
    if size > MAX_COOKIE_HEADER:
        raise UnreadableCookie("cookie_too_large")
    for part in header.split(";"):
        name, sep, value = part.partition("=")
        if not sep:
            continue
        name = name.strip()
        if not name:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1]
        jar.setdefault(name, []).append(value)
    return jar


def unquote_twice(value: str, *, plus: bool = False) -> str:
    """Percent-decode at most twice: CMPs encode their values once, twice or not at all."""
    decode = unquote_plus if plus else unquote
    once = decode(value)
    if "%" not in once:
        return once
    return decode(once)
