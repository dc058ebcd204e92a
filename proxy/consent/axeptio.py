"""Axeptio: ``axeptio_cookies``, percent-encoded JSON keyed by vendor (§4).

Example: ``{"$$token":"…","google_analytics":true,"$$completed":true}``. ``$$completed:false``
means the visitor closed the widget without finishing it: the trues are not their choice.
"""

from __future__ import annotations

from typing import Any

import msgspec

from proxy.consent.reading import Name, Names, all_of, combine, json_cookie, require
from proxy.consent.verdict import ConsentInput, ConsentSource, Verdict


class AxeptioOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                     tag_field="type", tag="axeptio"):
    cookie: Name = "axeptio_cookies"
    vendors: Names = ("google_analytics",)


def _vendor_state(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def value_verdict(raw: str, vendors: tuple[str, ...]) -> Verdict:
    """The verdict of one ``axeptio_cookies`` value."""
    decoded = json_cookie(raw)
    if decoded is None:
        return Verdict.ABSTAIN
    verdict = all_of(_vendor_state(decoded.get(vendor)) for vendor in vendors)
    if verdict is Verdict.GRANT and decoded.get("$$completed") is False:
        return Verdict.IMPLIED
    return verdict


def compile_source(options: AxeptioOptions) -> ConsentSource:
    require("axeptio", "cookie", options.cookie)
    require("axeptio", "vendors", options.vendors)
    name, vendors = options.cookie, options.vendors

    def axeptio(inp: ConsentInput) -> Verdict:
        values = inp.cookies.get(name)
        if not values:
            return Verdict.ABSTAIN
        return combine(value_verdict(value, vendors) for value in values)

    return axeptio
