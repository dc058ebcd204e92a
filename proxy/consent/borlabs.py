"""Borlabs Cookie: ``borlabs-cookie``, percent-encoded JSON with ``consents.<group>`` lists (§4).

Example: ``{"consents":{"essential":["borlabs-cookie"],"statistics":["google-analytics"]}}``.
A cookie that exists but lacks the service is a recorded refusal, not an absence.
"""

from __future__ import annotations

import msgspec

from proxy.consent.reading import Name, Names, combine, json_cookie, require
from proxy.consent.verdict import ConsentInput, ConsentSource, Verdict


class BorlabsOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                     tag_field="type", tag="borlabs"):
    cookie: Name = "borlabs-cookie"
    group: Name = "statistics"
    services: Names = ("google-analytics",)


def value_verdict(raw: str, group: str, services: tuple[str, ...]) -> Verdict:
    """The verdict of one ``borlabs-cookie`` value."""
    decoded = json_cookie(raw)
    consents = decoded.get("consents") if decoded is not None else None
    if not isinstance(consents, dict):
        return Verdict.ABSTAIN  # not a Borlabs choice at all
    accepted = consents.get(group, [])
    if not isinstance(accepted, list):
        return Verdict.ABSTAIN
    return Verdict.GRANT if all(service in accepted for service in services) else Verdict.DENY


def compile_source(options: BorlabsOptions) -> ConsentSource:
    require("borlabs", "cookie", options.cookie)
    require("borlabs", "group", options.group)
    require("borlabs", "services", options.services)
    name, group, services = options.cookie, options.group, options.services

    def borlabs(inp: ConsentInput) -> Verdict:
        values = inp.cookies.get(name)
        if not values:
            return Verdict.ABSTAIN
        return combine(value_verdict(value, group, services) for value in values)

    return borlabs
