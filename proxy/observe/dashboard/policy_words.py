"""The policy in plain words: what the compiled configuration does, in sentences, for the
dashboard's policy panel."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from proxy.config import Config
from proxy.consent.registry import source_type
from proxy.delivery.outbound import OutboundRequest
from proxy.ingest.client import truncate
from proxy.sanitize.policy import Action, Rule, compile_policy

_NUMBERED = re.compile(r"^(\D+)(\d+)$")


def describe_policy(config: Config) -> list[dict[str, Any]]:
    """What the compiled configuration does, in sentences, section by section. Derived from
    ``Config`` and the compiled policy table, so it changes when they do."""
    privacy, consent = config.privacy, config.consent
    pseudo = privacy.pseudonym
    policy = compile_policy(privacy, config.allowed_origins)

    accepted = [
        f"Measurement IDs: {', '.join(config.measurement_ids)}; any other tid is dropped.",
        (
            f"Origins: {', '.join(config.allowed_origins)}; a beacon from another Origin is "
            "dropped."
            if config.allowed_origins
            else "Origins: any (allowed_origins is empty)."
        ),
        "Bots and automation (crawlers, headless browsers, HTTP libraries) are dropped.",
        (
            f"Rate limit: {config.rate_limit.per_network} beacons per client network "
            f"(IPv4 /24, IPv6 /48) per {config.rate_limit.window}."
            if config.rate_limit.per_network
            else "Rate limit: off."
        ),
    ]

    regimes = consent.regimes
    defaults = consent.defaults
    gpc = {
        "deny": "Sec-GPC: 1 drops the beacon, whatever the consent cookie says.",
        "ignore": "Sec-GPC is ignored.",
        "ignore_for_explicit_grant": (
            "Sec-GPC: 1 drops the beacon unless a source reports an explicit grant."
        ),
    }[consent.gpc]
    dnt = {
        "deny": "DNT: 1 drops the beacon.",
        "ignore": "DNT is ignored.",
    }[consent.dnt]
    consent_lines = [
        "Sources, in order: " + ", ".join(source_type(s) for s in consent.sources) + ".",
        "Any source saying denied wins; then any granted forwards; a consent manager's "
        "'granted without user action' counts only in opt-out regions and never with GPC.",
        f"With no signal — opt-in regions ({', '.join(regimes.opt_in) or 'none'}): "
        f"{defaults.opt_in}; opt-out regions ({', '.join(regimes.opt_out) or 'none'}): "
        f"{defaults.opt_out}; elsewhere: {defaults.other}; place unknown: {defaults.unknown}.",
        gpc,
        dnt,
        (
            "The visitor's place comes from the geo database (in memory only)."
            if config.geo.database
            else "No geo database: every visitor's place is unknown, so the 'place unknown' "
            "default applies."
        ),
    ]

    outbound_headers = ", ".join(OutboundRequest("", "", "").headers())
    leaves = [
        f"Profile: {privacy.profile}.",
        f"cid becomes a keyed hash of {pseudo.bits} bits; the key (salt) changes every "
        f"{pseudo.rotation} and is never stored with the data.",
        (
            "Beacons without a cid get a pseudonym from the truncated network and the "
            "generalised browser (cookieless)."
            if pseudo.cookieless
            else "Beacons without a cid are dropped."
        ),
        _location_sentence(config),
        "The User-Agent is rebuilt from browser family, major version and OS family.",
        f"Headers sent to Google: {outbound_headers} — nothing else.",
        *(f"{name} is always set to {value}." for name, value in policy.forced.items()),
    ]
    if config.internal_traffic.networks:
        leaves.append(
            f"Beacons from {len(config.internal_traffic.networks)} internal network(s) are "
            f"marked tt={config.internal_traffic.traffic_type}."
        )
    leaves += _parameter_lines(policy.table)

    upstream = config.upstream
    where = [
        (
            "Dry run: nothing is sent; each request that would go to Google is printed."
            if config.dry_run
            else f"Endpoint: {upstream.url} ({upstream.client} client)."
        ),
        f"Retries: {upstream.retries}, for network errors, 5xx and 429.",
        (
            "Undelivered beacons wait in a Redis outbox, discarded after "
            f"{config.state.outbox_max_age}."
            if config.state.redis_url
            else "Undelivered beacons wait in memory (no Redis), discarded after "
            f"{config.state.outbox_max_age}."
        ),
        f"Audit trail: {config.audit.sample:.0%} of forwarded beacons and every drop, "
        f"at most {config.audit.max_records} records, no personal value.",
    ]
    return [
        {"title": "What is accepted", "lines": accepted},
        {"title": "Consent", "lines": consent_lines},
        {"title": "What leaves for Google", "lines": leaves},
        {"title": "Where it goes", "lines": where},
    ]


def _location_sentence(config: Config) -> str:
    loc = config.privacy.location
    if loc.mode == "omit":
        return "Visitor address: none is sent (_uip omitted)."
    if loc.mode == "truncated":
        example = ipaddress.ip_address("203.0.113.57")
        cut = truncate(example, loc.ipv4_prefix, loc.ipv6_prefix)
        return (
            f"Visitor address: the network part only, IPv4 /{loc.ipv4_prefix} and IPv6 "
            f"/{loc.ipv6_prefix} (203.0.113.57 → {cut})."
        )
    if loc.mode == "country":
        return "Visitor address: a representative address of the visitor's country."
    return (
        "Visitor address: a representative address of the smallest place (city, region, "
        f"country) where at least {loc.k} distinct visitors were seen within {loc.window}."
    )


def _parameter_lines(table: dict[str, Rule]) -> list[str]:
    groups: dict[str, list[str]] = {}
    for name, rule in table.items():
        if rule.name == "proxy_set":
            continue  # set by the proxy itself, described above
        if rule.drops:
            label = "Always removed"
        elif rule.action is Action.KEPT:
            label = "Kept as sent"
        elif rule.action is Action.DROPPED:
            label = "Kept only in the shape gtag sends, else removed"
        else:
            label = f"{rule.action.value.capitalize()} ({rule.name})"
        groups.setdefault(label, []).append(name)
    lines = [f"{label}: {_compact(names)}." for label, names in sorted(groups.items())]
    lines.append("Any other parameter is removed.")
    return lines


def _compact(names: list[str]) -> str:
    """``pr1 … pr200`` as ``pr1 to pr200``: runs of numbered names collapse."""
    runs: dict[str, list[int]] = {}
    plain: list[str] = []
    for name in names:
        match = _NUMBERED.match(name)
        if match:
            runs.setdefault(match.group(1), []).append(int(match.group(2)))
        else:
            plain.append(name)
    for stem, numbers in runs.items():
        numbers.sort()
        if len(numbers) > 2 and numbers[-1] - numbers[0] == len(numbers) - 1:
            plain.append(f"{stem}{numbers[0]} to {stem}{numbers[-1]}")
        else:
            plain += [f"{stem}{n}" for n in numbers]
    return ", ".join(plain)
