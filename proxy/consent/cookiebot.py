"""Cookiebot: ``CookieConsent``, a JS object literal, usually percent-encoded (§4).

Example: ``{stamp:'…',necessary:true,statistics:false,method:'explicit',ver:1}``. The whole
value ``-1`` means Cookiebot decided for the visitor (a region without a consent duty).
"""

from __future__ import annotations

import re

import msgspec

from proxy.consent.reading import Name, combine, require
from proxy.consent.verdict import ConsentInput, ConsentSource, Verdict
from proxy.ingest.cookies import unquote_twice

# Keys are bare identifiers (quoted ones are tolerated); values are quoted strings or bare
# tokens (true, 1, 1615214322795).
_KEY = re.compile(r"\s*(['\"]?)([A-Za-z_$][\w$]*)\1\s*:\s*")
_VALUE = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^,{}'\"]*")
_SEPARATOR = re.compile(r"\s*([,}])")

_NO_ACTION_VALUE = "-1"


class CookiebotOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                       tag_field="type", tag="cookiebot"):
    cookie: Name = "CookieConsent"
    category: Name = "statistics"


def parse_object_literal(text: str) -> dict[str, str] | None:
    """Flat ``{key:value,…}`` into key -> value (quotes removed), None if it is not one."""
    text = text.strip()
    if not text.startswith("{"):
        return None
    fields: dict[str, str] = {}
    if text[1:].strip() == "}":
        return fields
    pos = 1
    while True:
        key = _KEY.match(text, pos)
        if key is None:
            return None
        value = _VALUE.match(text, key.end())
        if value is None:  # unreachable: the pattern also matches the empty string
            return None
        token = value.group().strip()
        if len(token) >= 2 and token[0] in "'\"" and token[-1] == token[0]:
            token = token[1:-1]
        fields[key.group(2)] = token
        separator = _SEPARATOR.match(text, value.end())
        if separator is None:
            return None
        pos = separator.end()
        if separator.group(1) == "}":
            return fields if not text[pos:].strip() else None


def value_verdict(raw: str, category: str) -> Verdict:
    """The verdict of one ``CookieConsent`` value."""
    text = unquote_twice(raw).strip()
    if text == _NO_ACTION_VALUE:
        return Verdict.IMPLIED
    fields = parse_object_literal(text)
    if fields is None:
        return Verdict.ABSTAIN
    state = fields.get(category)
    if state == "false":
        return Verdict.DENY
    if state != "true":
        return Verdict.ABSTAIN
    if fields.get("method") == "implied" or fields.get("stamp") == _NO_ACTION_VALUE:
        return Verdict.IMPLIED
    return Verdict.GRANT


def compile_source(options: CookiebotOptions) -> ConsentSource:
    require("cookiebot", "cookie", options.cookie)
    require("cookiebot", "category", options.category)
    name, category = options.cookie, options.category

    def cookiebot(inp: ConsentInput) -> Verdict:
        values = inp.cookies.get(name)
        if not values:
            return Verdict.ABSTAIN
        return combine(value_verdict(value, category) for value in values)

    return cookiebot
