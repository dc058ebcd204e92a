"""iubenda: ``_iub_cs-<siteId>``, percent-encoded JSON with ``purposes`` by number (§4).

Purpose ``4`` is measurement. A cookie holding only ``{"id":…}`` records no choice. Names with
a further suffix (``_iub_cs-<siteId>-uspr``) are other frameworks' state, not this consent.
"""

from __future__ import annotations

from typing import Any

import msgspec

from proxy.consent.reading import Name, combine, json_cookie, require
from proxy.consent.verdict import ConsentInput, ConsentSource, Verdict


class IubendaOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                     tag_field="type", tag="iubenda"):
    cookie_prefix: Name = "_iub_cs-"
    purpose: Name = "4"


def is_consent_cookie(name: str, prefix: str) -> bool:
    """``_iub_cs-123`` is; ``_iub_cs-123-uspr`` and the bare prefix are not."""
    site = name[len(prefix):]
    return name.startswith(prefix) and bool(site) and "-" not in site


def value_verdict(raw: str, purpose: str) -> Verdict:
    """The verdict of one iubenda consent value."""
    decoded = json_cookie(raw)
    if decoded is None:
        return Verdict.ABSTAIN
    purposes: Any = decoded.get("purposes")
    state = purposes.get(purpose) if isinstance(purposes, dict) else None
    if isinstance(state, bool):
        return Verdict.GRANT if state else Verdict.DENY
    consent = decoded.get("consent")
    if consent is False:
        return Verdict.DENY
    # ``consent: true`` is "accept all" only without per-purpose choices that omit ours.
    if consent is True and not isinstance(purposes, dict):
        return Verdict.GRANT
    return Verdict.ABSTAIN


def compile_source(options: IubendaOptions) -> ConsentSource:
    require("iubenda", "cookie_prefix", options.cookie_prefix)
    require("iubenda", "purpose", options.purpose)
    prefix, purpose = options.cookie_prefix, options.purpose

    def iubenda(inp: ConsentInput) -> Verdict:
        return combine(
            value_verdict(value, purpose)
            for name, values in inp.cookies.items()
            if is_consent_cookie(name, prefix)
            for value in values
        )

    return iubenda
