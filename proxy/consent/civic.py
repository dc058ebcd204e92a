"""Civic Cookie Control: ``CookieControl``, raw JSON (sometimes percent-encoded) (§4).

Example: ``{"optionalCookies":{"analytics":"revoked"},"consentDate":…,"consentExpiry":90,
"interactedWith":true}``. ``consentDate`` is epoch milliseconds, ``consentExpiry`` days; a
choice past its expiry is stale and abstains, as Civic itself would ask again.
"""

from __future__ import annotations

from typing import Any

import msgspec

from proxy.consent.reading import Name, Names, all_of, combine, is_number, json_cookie, require
from proxy.consent.verdict import ConsentInput, ConsentSource, Verdict

_STATES = {"accepted": True, "revoked": False}
_DAY_MS = 86_400_000


class CivicOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                   tag_field="type", tag="civic"):
    cookie: Name = "CookieControl"
    categories: Names = ("analytics",)


def is_expired(decoded: dict[str, Any], now: float) -> bool:
    """True only when the cookie carries both a date and an expiry, and they have passed."""
    date, days = decoded.get("consentDate"), decoded.get("consentExpiry")
    if not (is_number(date) and is_number(days)):
        return False
    try:
        return bool(date + days * _DAY_MS < now * 1000)
    except OverflowError:  # a float plus an int of hundreds of digits: no usable expiry
        return False


def _category_state(value: Any) -> bool | None:
    return _STATES.get(value) if isinstance(value, str) else None


def value_verdict(raw: str, categories: tuple[str, ...], now: float) -> Verdict:
    """The verdict of one ``CookieControl`` value at time ``now`` (epoch seconds)."""
    decoded = json_cookie(raw)
    if decoded is None or is_expired(decoded, now):
        return Verdict.ABSTAIN
    optional = decoded.get("optionalCookies")
    if not isinstance(optional, dict):
        return Verdict.ABSTAIN
    verdict = all_of(_category_state(optional.get(category)) for category in categories)
    if verdict is Verdict.GRANT and decoded.get("interactedWith") is False:
        return Verdict.IMPLIED
    return verdict


def compile_source(options: CivicOptions) -> ConsentSource:
    require("civic", "cookie", options.cookie)
    require("civic", "categories", options.categories)
    name, categories = options.cookie, options.categories

    def civic(inp: ConsentInput) -> Verdict:
        values = inp.cookies.get(name)
        if not values:
            return Verdict.ABSTAIN
        return combine(value_verdict(value, categories, inp.now) for value in values)

    return civic
