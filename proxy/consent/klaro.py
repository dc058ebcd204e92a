"""Klaro: ``klaro``, percent-encoded JSON of service name -> bool (§4).

Service names are the site's own (``google-analytics``, ``googleAnalytics``, …), hence options.
"""

from __future__ import annotations

from typing import Any

import msgspec

from proxy.consent.reading import Name, Names, all_of, combine, json_cookie, require
from proxy.consent.verdict import ConsentInput, ConsentSource, Verdict


class KlaroOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                   tag_field="type", tag="klaro"):
    cookie: Name = "klaro"
    services: Names = ("google-analytics",)


def _service_state(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def value_verdict(raw: str, services: tuple[str, ...]) -> Verdict:
    """The verdict of one ``klaro`` value: all services true grant, any false denies."""
    decoded = json_cookie(raw)
    if decoded is None:
        return Verdict.ABSTAIN
    return all_of(_service_state(decoded.get(service)) for service in services)


def compile_source(options: KlaroOptions) -> ConsentSource:
    require("klaro", "cookie", options.cookie)
    require("klaro", "services", options.services)
    name, services = options.cookie, options.services

    def klaro(inp: ConsentInput) -> Verdict:
        values = inp.cookies.get(name)
        if not values:
            return Verdict.ABSTAIN
        return combine(value_verdict(value, services) for value in values)

    return klaro
