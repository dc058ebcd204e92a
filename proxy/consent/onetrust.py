"""OneTrust: ``OptanonConsent``, a form-urlencoded value with ``groups=C0001:1,C0002:0,…`` (§4).

The analytics group id differs per site (legacy sites use numeric ids), hence configurable.
OneTrust writes this cookie on page load with the region's defaults; a user action shows as
``interactionCount`` above zero or as the ``OptanonAlertBoxClosed`` cookie.
"""

from __future__ import annotations

from urllib.parse import unquote

import msgspec

from proxy.consent.reading import Name, Names, all_of, combine, require
from proxy.consent.verdict import ConsentInput, ConsentSource, Verdict
from proxy.ingest.cookies import unquote_twice

_STATES = {"1": True, "0": False}


class OneTrustOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                      tag_field="type", tag="onetrust"):
    cookie: Name = "OptanonConsent"
    groups: Names = ("C0002",)
    alert_cookie: Name = "OptanonAlertBoxClosed"


def parse_fields(raw: str) -> dict[str, str]:
    """``a=1&b=2`` into a dict; each field decoded on its own so an encoded ``&`` stays data."""
    if "=" not in raw:
        # The whole value was percent-encoded once more; ``+`` is still the inner layer's space.
        raw = unquote(raw)
    fields: dict[str, str] = {}
    for pair in raw.split("&"):
        key, sep, value = pair.partition("=")
        if sep:
            fields[unquote_twice(key, plus=True).strip()] = unquote_twice(value, plus=True)
    return fields


def group_states(groups: str) -> dict[str, set[bool | None]]:
    """``C0001:1,C0002:0`` into group -> states; an odd state is kept as ``None``."""
    states: dict[str, set[bool | None]] = {}
    for item in groups.split(","):
        group, sep, state = item.partition(":")
        if sep:
            states.setdefault(group.strip(), set()).add(_STATES.get(state.strip()))
    return states


def _group_state(states: set[bool | None] | None) -> bool | None:
    if not states:
        return None
    if False in states:
        return False
    return True if states == {True} else None


def value_verdict(raw: str, groups: tuple[str, ...], alert_box_closed: bool) -> Verdict:
    """The verdict of one ``OptanonConsent`` value."""
    fields = parse_fields(raw)
    states = group_states(fields.get("groups", ""))
    verdict = all_of(_group_state(states.get(group)) for group in groups)
    if verdict is not Verdict.GRANT or alert_box_closed:
        return verdict
    # Legacy cookies lack interactionCount: without the alert cookie nothing shows a choice.
    count = fields.get("interactionCount", "").strip()
    # Compared as text: int() refuses digit strings beyond 4300 characters.
    interacted = count.isascii() and count.isdigit() and count.strip("0") != ""
    return Verdict.GRANT if interacted else Verdict.IMPLIED


def compile_source(options: OneTrustOptions) -> ConsentSource:
    require("onetrust", "cookie", options.cookie)
    require("onetrust", "groups", options.groups)
    require("onetrust", "alert_cookie", options.alert_cookie)
    name, groups, alert_cookie = options.cookie, options.groups, options.alert_cookie

    def onetrust(inp: ConsentInput) -> Verdict:
        values = inp.cookies.get(name)
        if not values:
            return Verdict.ABSTAIN
        alert_box_closed = any(value.strip() for value in inp.cookies.get(alert_cookie, ()))
        return combine(value_verdict(value, groups, alert_box_closed) for value in values)

    return onetrust
