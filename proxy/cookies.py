"""Cookie header parsing by hand (consent-signals.md §2).

The standard library's cookie parser (``http.cookies``) returns an empty jar for a whole
header as soon as one cookie holds raw JSON, which would silently lose every consent cookie
next to it.
"""

from __future__ import annotations

from urllib.parse import unquote, unquote_plus

# A Cookie header larger than this is not a browser's: refuse to parse it at all.
MAX_COOKIE_HEADER = 16 * 1024

CookieJar = dict[str, list[str]]


def parse_cookie_header(header: str | None) -> CookieJar:
    """Split a Cookie header into ``name -> [raw values]``, keeping every copy of a name.

    Values are returned raw (not unquoted): each consent source knows its own encoding.
    """
    jar: CookieJar = {}
    if not header or len(header) > MAX_COOKIE_HEADER:
        return jar
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
