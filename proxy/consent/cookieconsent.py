"""cookieconsent (orestbida) v3 and v2: ``cc_cookie``, JSON listing accepted categories (§4).

v3 writes ``categories`` and ``expirationTime`` (epoch milliseconds), v2 writes ``level``. A
cookie that exists but lacks the category is a recorded refusal; an expired one is stale.
"""

from __future__ import annotations

from typing import Any

import msgspec

from proxy.consent.reading import Name, Names, combine, is_number, json_cookie, require
from proxy.consent.verdict import ConsentInput, ConsentSource, Verdict


class CookieConsentOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                           tag_field="type", tag="cookieconsent"):
    cookie: Name = "cc_cookie"
    categories: Names = ("analytics",)


def _accepted(decoded: dict[str, Any]) -> list[Any] | None:
    for key in ("categories", "level"):
        value = decoded.get(key)
        if isinstance(value, list):
            return value
    return None


def value_verdict(raw: str, categories: tuple[str, ...], now: float) -> Verdict:
    """The verdict of one ``cc_cookie`` value at time ``now`` (epoch seconds)."""
    decoded = json_cookie(raw)
    if decoded is None:
        return Verdict.ABSTAIN
    expires = decoded.get("expirationTime")
    if is_number(expires) and expires < now * 1000:
        return Verdict.ABSTAIN
    accepted = _accepted(decoded)
    if accepted is None:
        return Verdict.ABSTAIN
    return Verdict.GRANT if all(c in accepted for c in categories) else Verdict.DENY


def compile_source(options: CookieConsentOptions) -> ConsentSource:
    require("cookieconsent", "cookie", options.cookie)
    require("cookieconsent", "categories", options.categories)
    name, categories = options.cookie, options.categories

    def cookieconsent(inp: ConsentInput) -> Verdict:
        values = inp.cookies.get(name)
        if not values:
            return Verdict.ABSTAIN
        return combine(value_verdict(value, categories, inp.now) for value in values)

    return cookieconsent
