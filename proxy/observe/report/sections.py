"""The report's other sections, read from the configuration: the endpoint, consent, the
pseudonym and its collisions, location, the framing conditions, server-side events, URLs and
the device."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from proxy.config import DRY_RUN, EU_ENDPOINT, Config
from proxy.consent.gate import ConsentGate
from proxy.location.regions import expand_regions
from proxy.mp.fields import TOP_LEVEL as MP_FIELDS
from proxy.observe.report.facts import (
    CLOSED_SETS,
    EXTERNAL,
    FINGERPRINT_PROBES,
    Facts,
    code,
)
from proxy.observe.report.forwarded import location_form
from proxy.tag.rewrite import GOOGLE_DOMAINS

# Used when neither a volume is given nor an observed one is known; the report says so.
DEFAULT_DAILY_VISITORS = 10_000
REFERENCE_VOLUMES = (1_000, 10_000, 100_000, 1_000_000)
DAY = 86_400

# Google's collection hosts: region1 is the EU endpoint (collection and processing in the EU).
EU_HOSTS = frozenset({urlsplit(EU_ENDPOINT).hostname or ""})
GOOGLE_HOSTS = re.compile(r"(^|\.)(google-analytics\.com|analytics\.google\.com)$")


@dataclass(frozen=True, slots=True)
class Collision:
    """Expected pseudonym collisions among ``visitors`` distinct client ids in one window."""

    daily_visitors: int
    basis: str  # "given" | "observed" | "illustrative" | "reference"
    visitors_per_window: int
    bits: int
    p_shared: float  # P(a given visitor shares its pseudonym with at least one other)
    colliding: float  # expected number of visitors sharing their pseudonym
    distinct: float  # expected number of distinct pseudonyms


def collision(
    bits: int, daily_visitors: int, rotation: int = DAY, basis: str = "given"
) -> Collision:
    """``1 - (1 - 2^-b)^(N-1)``: each of the N-1 others lands on the same b-bit value with
    probability 2^-b, independently (HMAC outputs are uniform). Computed with log1p/expm1 so
    64-bit pseudonyms do not round to zero. For a rotation other than a day, the daily volume
    is scaled to the window (exact for a day, an upper bound for longer windows)."""
    per_window = max(1, round(daily_visitors * rotation / DAY))
    log_miss = math.log1p(-(2.0**-bits))
    p_shared = -math.expm1((per_window - 1) * log_miss)
    distinct = 2.0**bits * -math.expm1(per_window * log_miss)
    return Collision(
        daily_visitors, basis, per_window, bits, p_shared, per_window * p_shared, distinct
    )


def endpoint(config: Config) -> dict[str, Any]:
    url = config.upstream.url
    if url == DRY_RUN:
        return {
            "url": DRY_RUN, "host": None, "dry_run": True, "region": "none", "eu": None,
            "why": "a dry run: every request that would go to Google is printed on standard "
            "output and nothing is sent; for production set `upstream.url` (the built-in "
            f"default is Google's EU endpoint, `{EU_ENDPOINT}`)",
        }
    split = urlsplit(url)
    host = split.hostname or ""
    # Never user info: an endpoint URL may carry credentials.
    shown = f"{split.scheme}://{host}{f':{split.port}' if split.port else ''}{split.path}"
    if host in EU_HOSTS:
        region, eu, why = "EU", True, "Google's EU endpoint: hits are collected in the EU"
    elif GOOGLE_HOSTS.search(host):
        region, eu, why = "global", False, (
            "a Google endpoint that is not EU-bound: Google may collect the hit outside the EU")
    else:
        region, eu, why = "unknown", None, (
            "not a Google endpoint (e.g. a server-side tagging server): the region is that "
            "server's")
    if split.scheme != "https":
        why += "; not encrypted (http)"
    return {"url": shown, "host": host, "dry_run": False, "region": region, "eu": eu,
            "why": why}


def consent(config: Config) -> dict[str, Any]:
    consent = config.consent
    gate = ConsentGate(consent)
    regimes, defaults = consent.regimes, consent.defaults
    gpc = {
        "deny": "`Sec-GPC: 1` drops the beacon, even with a grant",
        "ignore": "`Sec-GPC` is ignored (it still blocks a grant without user action)",
        "ignore_for_explicit_grant": "`Sec-GPC: 1` drops the beacon unless a source reads an "
        "explicit grant",
    }[consent.gpc]
    dnt = "`DNT: 1` drops the beacon" if consent.dnt == "deny" else "`DNT` is ignored"
    geo = bool(config.geo.database)
    return {
        "sources": list(gate.source_names),
        "gpc": consent.gpc,
        "dnt": consent.dnt,
        "geo_database": geo,
        "regimes": {
            "opt_in": {"configured": list(regimes.opt_in),
                       "codes": sorted(expand_regions(regimes.opt_in))},
            "opt_out": {"configured": list(regimes.opt_out),
                        "codes": sorted(expand_regions(regimes.opt_out))},
        },
        "defaults": {
            "opt_in": defaults.opt_in, "opt_out": defaults.opt_out,
            "other": defaults.other, "unknown": defaults.unknown,
        },
        "rule": [
            "a source that reads denied drops the beacon",
            dnt,
            gpc,
            "a source that reads granted forwards it",
            "a consent manager's grant without user action (implied) forwards only in opt-out "
            "regions and never with `Sec-GPC: 1`",
            "with no signal, the visitor's regime decides (table below)",
            "a source that fails to read drops the beacon",
        ],
        "regime_lookup": (
            "the visitor's country (and region) from `geo.database`, looked up in memory"
            if geo else
            "`geo.database` is not set: no visitor's country is known, so every visitor is "
            "in the unknown regime"
        ),
    }


def collisions(config: Config, daily_visitors: int | None,
                observed: int | None) -> tuple[Collision, ...]:
    pseudo = config.privacy.pseudonym
    bits, rotation = pseudo.bits, pseudo.rotation_seconds
    out: list[Collision] = []
    if daily_visitors is not None:
        out.append(collision(bits, daily_visitors, rotation, "given"))
    if observed is not None:
        out.append(collision(bits, observed, rotation, "observed"))
    if not out:
        out.append(collision(bits, DEFAULT_DAILY_VISITORS, rotation, "illustrative"))
    seen = {c.daily_visitors for c in out}
    out += [collision(bits, n, rotation, "reference") for n in REFERENCE_VOLUMES if n not in seen]
    return tuple(out)


def pseudonym(config: Config, primary: Collision) -> dict[str, Any]:
    pseudo = config.privacy.pseudonym
    note = {
        "given": "the daily volume given with `--daily-visitors`",
        "observed": "the observed daily volume",
        "illustrative": f"an illustrative {DEFAULT_DAILY_VISITORS:,} visitors a day (no volume "
        "given: pass `--daily-visitors N`)",
    }[primary.basis]
    return {
        "bits": pseudo.bits,
        "rotation": pseudo.rotation,
        "rotation_seconds": pseudo.rotation_seconds,
        "cookieless": pseudo.cookieless,
        "algorithm": f"HMAC-SHA256(salt of the window, tid|cid), cut to {pseudo.bits} bits",
        "formula": "P(a visitor shares its pseudonym) = 1 - (1 - 2^-b)^(N-1); "
        "expected visitors sharing = N * P",
        "volume": note,
        "window_note": (
            "N is the number of distinct client ids per salt window"
            + ("" if pseudo.rotation_seconds == DAY else
               f"; the daily volume is scaled to the {pseudo.rotation} window (for windows "
               "longer than a day, an upper bound)")
            + "; collisions only matter within one measurement ID"
        ),
    }


def location(config: Config) -> dict[str, Any]:
    loc = config.privacy.location
    out: dict[str, Any] = {
        "mode": loc.mode,
        "sent": location_form(config) or "nothing: Google places every visitor at the "
        "proxy's own location",
        "meets_condition_1": loc.mode in ("omit", "country", "mesh"),
        "geo_database": bool(config.geo.database),
    }
    if loc.mode == "truncated":
        out |= {"ipv4_prefix": loc.ipv4_prefix, "ipv6_prefix": loc.ipv6_prefix}
    if loc.mode == "mesh":
        out |= {"k": loc.k, "window": loc.window}
    return out


def framing(endpoint: dict[str, Any], config: Config) -> tuple[dict[str, Any], ...]:
    origins = (f"beacons are accepted only from {code(config.allowed_origins)}"
               if config.allowed_origins else "`allowed_origins` is empty: any origin is accepted")
    eu = endpoint["eu"] if not endpoint["dry_run"] else None
    tag = _tag_framing(config)
    return (
        {"title": "The browser contacts only the proxy", "met": tag["met"],
         "why": f"{tag['why']}; {origins}"},
        {"title": "The data stays in the EU", "met": eu,
         "why": endpoint["why"]},
    )


def _tag_framing(config: Config) -> dict[str, Any]:
    tag = config.tag
    domains = ", ".join(f"`{d}`" for d in GOOGLE_DOMAINS)
    if not tag.enabled:
        return {"met": None, "why": "decided on the site, not here: tag serving is off "
                "(`tag.enabled: false`), so `gtag.js` comes from Google unless the site "
                "hosts it, and gtag must point at the proxy (`server_container_url`)"}
    if tag.public_url is None:
        return {"met": False, "why": "tag serving is on but `tag.public_url` is not set: "
                "the tag is served to loopback requests only, so visitors' browsers still "
                "load `gtag.js` from Google"}
    url = tag.public_url.rstrip("/")
    return {"met": True, "why": f"the proxy serves the tag at `{url}/gtag/js?id=…`, fetched "
            f"from `{tag.origin}` by the proxy alone, with every host under {domains} "
            f"rewritten to `{url}`; advertising endpoints the tag may call are answered by "
            "the proxy and never forwarded. The page must load the tag from the proxy and set "
            f"`server_container_url: '{url}'`"}


def measurement_protocol(config: Config) -> dict[str, Any]:
    """Server-side events (proxy/mp/): where they go and what of each field leaves."""
    mp = config.measurement_protocol
    if not mp.enabled:
        return {"enabled": False, "summary": "off (`measurement_protocol.enabled: false`)",
                "fields": []}
    url = DRY_RUN if config.dry_run else mp.upstream_url
    split = urlsplit(mp.upstream_url)
    shown = f"{split.scheme}://{split.hostname or ''}{split.path}"
    where = "printed (dry run)" if config.dry_run else f"to `{shown}`"
    allowed = ", ".join(f"`{n}`" for n in config.privacy.event_params) or "none"
    properties = ", ".join(f"`{n}`" for n in config.privacy.user_properties) or "none"
    forms = {
        "events[].params": f"the rules of their `/g/collect` counterparts; allow-listed names "
        f"only ({allowed}) besides page_location, page_referrer, page_title, currency, "
        "session_id, engagement_time_msec",
        "user_properties": f"allow-listed names only ({properties}), scrubbed"
        if config.privacy.profile == "balanced"
        else "none: the strict profile forwards no user property",
    }
    return {
        "enabled": True,
        "url": url if config.dry_run else shown,
        "summary": f"`POST /mp/collect` from the site's back end, {where} through the same "
        "outbox; only ids whose token and `api_secret` are set in the environment",
        "authentication": "`Authorization: Bearer` with the id's proxy token "
        "(`ANALYTICS_PROXY_MP_TOKEN_<ID>`); Google's `api_secret` "
        "(`ANALYTICS_PROXY_MP_API_SECRET_<ID>`) is added by the proxy and never accepted from "
        "the back end",
        "consent": '`"analytics_consent": "granted"` in the body, asserted by the back end; '
        "anything else is dropped (`no_consent`, `denied`)",
        "fields": [{"field": name, "treatment": treatment, "form": forms.get(name, form)}
                   for name, treatment, form in MP_FIELDS],
    }


def urls(f: Facts) -> dict[str, Any]:
    out = f.external_ref
    external = (
        "dropped" if out is None else "origin" if out == f"{EXTERNAL}/" else "forwarded"
    )
    return {
        "page_query_keys": list(f.page_query),
        "path_query_keys": list(f.path_query),
        "internal_referrer_query_keys": list(f.internal_ref_query),
        "external_referrer": external,
        "url_event_params": [f"ep.{n}" for n in f.url_event_params],
    }


def device(f: Facts) -> dict[str, Any]:
    return {
        "user_agent": "rebuilt",
        "dropped": [n for n in FINGERPRINT_PROBES
                    if n not in f.fingerprint_open and n not in f.fingerprint_closed],
        "reduced": {n: sorted(CLOSED_SETS[n]) for n in f.fingerprint_closed},
        "as_sent": list(f.fingerprint_open),
    }


def probability(p: float) -> str:
    if p == 0:
        return "0"
    return f"{p:.3g} ({p * 100:.3g} %)"
