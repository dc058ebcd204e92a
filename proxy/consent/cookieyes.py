"""CookieYes: ``cookieyes-consent``, ``key:value`` pairs joined by commas (§4).

Example: ``consentid:…,consent:yes,action:yes,analytics:no``. ``action`` records whether the
visitor acted; CookieYes writes the cookie without it (empty or ``no``) for region defaults.
"""

from __future__ import annotations

import msgspec

from proxy.consent.reading import Name, Names, all_of, combine, require
from proxy.consent.verdict import ConsentInput, ConsentSource, Verdict
from proxy.ingest.cookies import unquote_twice

_STATES = {"yes": True, "no": False}


class CookieYesOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                       tag_field="type", tag="cookieyes"):
    cookie: Name = "cookieyes-consent"
    categories: Names = ("analytics",)


def parse_pairs(raw: str) -> dict[str, list[str]]:
    """``a:yes,b:no`` into key -> every value given for it."""
    pairs: dict[str, list[str]] = {}
    for item in unquote_twice(raw).split(","):
        key, sep, value = item.partition(":")
        if sep:
            pairs.setdefault(key.strip(), []).append(value.strip().lower())
    return pairs


def _category_state(values: list[str] | None) -> bool | None:
    states = {_STATES.get(value) for value in values or ()}
    if False in states:
        return False
    return True if states == {True} else None


def value_verdict(raw: str, categories: tuple[str, ...]) -> Verdict:
    """The verdict of one ``cookieyes-consent`` value."""
    pairs = parse_pairs(raw)
    verdict = all_of(_category_state(pairs.get(category)) for category in categories)
    # A missing ``action`` is read like an empty one: nothing shows a user choice.
    acted = any(action not in ("", "no") for action in pairs.get("action", ()))
    return Verdict.IMPLIED if verdict is Verdict.GRANT and not acted else verdict


def compile_source(options: CookieYesOptions) -> ConsentSource:
    require("cookieyes", "cookie", options.cookie)
    require("cookieyes", "categories", options.categories)
    name, categories = options.cookie, options.categories

    def cookieyes(inp: ConsentInput) -> Verdict:
        values = inp.cookies.get(name)
        if not values:
            return Verdict.ABSTAIN
        return combine(value_verdict(value, categories) for value in values)

    return cookieyes
