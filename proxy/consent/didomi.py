"""Didomi: ``didomi_token``, base64 JSON listing ``vendors.enabled`` / ``vendors.disabled`` (§4).

Google Analytics is a custom vendor whose id carries a per-site suffix (``c:googleana-4TXnJigR``),
so a configured vendor ending in ``*`` matches by prefix. ``vendors_li`` (legitimate interest)
is never read: it is not consent.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import msgspec

from proxy.consent.reading import Name, Names, all_of, combine, decode_json_object, require
from proxy.consent.verdict import ConsentInput, ConsentSource, Verdict
from proxy.ingest.cookies import unquote_twice

_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*=*")
_TO_STANDARD = str.maketrans("-_", "+/")


class DidomiOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                    tag_field="type", tag="didomi"):
    cookie: Name = "didomi_token"
    vendors: Names = ("c:googleana-*",)


class VendorPattern:
    """A configured vendor id, exact or (with a trailing ``*``) a prefix, parsed once."""

    __slots__ = ("exact", "text")

    def __init__(self, pattern: str) -> None:
        self.exact = not pattern.endswith("*")
        self.text = pattern if self.exact else pattern[:-1]

    def matches(self, vendor: object) -> bool:
        if not isinstance(vendor, str):
            return False
        return vendor == self.text if self.exact else vendor.startswith(self.text)


def decode_token(raw: str) -> dict[str, Any] | None:
    """base64 (url-safe or standard, padding optional) JSON, or None."""
    text = unquote_twice(raw).strip()
    if not _BASE64.fullmatch(text):
        return None
    text = text.rstrip("=").translate(_TO_STANDARD)
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:  # binascii.Error: a length no padding can repair
        return None
    return decode_json_object(data)


def _list(section: Any, key: str) -> list[Any]:
    value = section.get(key) if isinstance(section, dict) else None
    return value if isinstance(value, list) else []


def _vendor_state(pattern: VendorPattern, enabled: list[Any], disabled: list[Any]) -> bool | None:
    if any(pattern.matches(vendor) for vendor in disabled):
        return False
    if any(pattern.matches(vendor) for vendor in enabled):
        return True
    return None


def value_verdict(raw: str, patterns: tuple[VendorPattern, ...]) -> Verdict:
    """The verdict of one ``didomi_token`` value."""
    token = decode_token(raw)
    if token is None:
        return Verdict.ABSTAIN
    vendors = token.get("vendors")
    enabled, disabled = _list(vendors, "enabled"), _list(vendors, "disabled")
    return all_of(_vendor_state(pattern, enabled, disabled) for pattern in patterns)


def compile_source(options: DidomiOptions) -> ConsentSource:
    require("didomi", "cookie", options.cookie)
    require("didomi", "vendors", options.vendors)
    if any(vendor == "*" for vendor in options.vendors):
        raise ValueError("consent source 'didomi': option 'vendors' needs a prefix before '*'")
    name = options.cookie
    patterns = tuple(VendorPattern(vendor) for vendor in options.vendors)

    def didomi(inp: ConsentInput) -> Verdict:
        values = inp.cookies.get(name)
        if not values:
            return Verdict.ABSTAIN
        return combine(value_verdict(value, patterns) for value in values)

    return didomi
