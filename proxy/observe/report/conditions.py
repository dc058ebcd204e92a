"""CNIL's seven proxy conditions (privacy-requirements.md §1), in its order, each judged from
what the compiled policy does."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from proxy.observe.report.facts import (
    CLICK_IDS,
    EXTERNAL,
    FINGERPRINT_PROBES,
    SCREENS,
    URL_EVENT_PARAMS,
    Facts,
    closed_set,
    code,
    detectors_phrase,
    internal_referrer,
    rotation,
    treatment_of,
)
from proxy.observe.report.sections import Collision, probability
from proxy.sanitize.pii import DEFAULT_DETECTORS
from proxy.sanitize.policy import CAMPAIGN, IDENTIFIERS

CNIL_TITLES = (
    "No IP address reaches the analytics tool",
    "The user identifier is replaced (collisions, changing salt)",
    "External referrers are removed",
    "All URL parameters are removed",
    "Fingerprinting data is reprocessed",
    "No cross-site or lasting identifiers",
    "Anything else that could re-identify is deleted",
)


@dataclass(frozen=True, slots=True)
class Condition:
    id: int
    title: str
    met: bool
    why: str


def _sentences(parts: Iterable[str]) -> str:
    return " ".join(p if p.endswith(".") else p + "." for p in parts if p)


def _condition_1(f: Facts) -> tuple[bool, list[str]]:
    loc, config = f.config.privacy.location, f.config
    why: list[str] = []
    if treatment_of(f.policy.rule("_uip")) is not None:
        return False, ["the browser's own `_uip` is forwarded (`privacy.overrides`)"]
    met = loc.mode in ("omit", "country", "mesh")
    if loc.mode == "omit":
        why.append("no address is sent: `_uip` is absent, and Google places every visitor at "
                   "the proxy's own location")
    elif loc.mode == "truncated":
        why.append(
            f"`_uip` carries the visitor's network address (IPv4 /{loc.ipv4_prefix}, IPv6 "
            f"/{loc.ipv6_prefix}): still an IP address, with no minimum number of visitors "
            "behind it; choose `privacy.location.mode: mesh` or `country` (or `omit`)"
        )
    elif loc.mode == "country":
        why.append("only the country leaves: `_uip` is one representative address per "
                   "country, taken from the geo database's own networks")
    else:
        why.append(
            "`_uip` is the representative address of the finest city → region → country "
            f"cell that saw at least k = {loc.k} distinct pseudonymous visitors in the last "
            f"{loc.window}; below that even for the country, nothing is sent"
        )
        if loc.window_seconds > config.privacy.pseudonym.rotation_seconds:
            why.append(
                f"the window ({loc.window}) is longer than the salt rotation "
                f"({config.privacy.pseudonym.rotation}): a visitor's pseudonym changes with "
                "each rotation, so one visitor returning across rotations counts more than "
                "once towards k"
            )
    why.append("the visitor's address is used in memory only and no forwarding header is sent")
    if config.internal_traffic.networks:
        why.append(f"office/VPN traffic is marked `tt={config.internal_traffic.traffic_type}` "
                   "without sending the address")
    return met, why


def _condition_2(f: Facts, primary: Collision) -> tuple[bool, list[str]]:
    cid, pseudo = f.policy.rule("cid"), f.config.privacy.pseudonym
    if cid.name != "pseudonym":
        if treatment_of(cid) is None:
            return True, ["no client id is forwarded at all (`privacy.overrides`: drop); "
                          "Google cannot count users"]
        return False, [f"`cid` is forwarded {treatment_of(cid)} (`privacy.overrides`): the "
                       "original client id, from a cookie that lasts up to two years, leaves"]
    why = [
        f"`cid` is replaced by HMAC-SHA256 of (tid, cid) under a salt that changes every "
        f"{pseudo.rotation} and is destroyed when its window ends, cut to {pseudo.bits} bits",
        f"at {primary.visitors_per_window:,} visitors per window ({primary.basis} volume), a "
        f"given visitor shares its pseudonym with another with probability "
        f"{probability(primary.p_shared)}; about {primary.colliding:.3g} visitors are "
        "expected to share theirs",
    ]
    if pseudo.cookieless:
        why.append("a beacon without `cid` gets one derived from its network and generalised "
                   "browser, so visitors of one network with the same browser share it")
    if "sid" in f.forwarded:
        why.append("`sid` (the session's start time) is kept: it links the two pseudonyms of a "
                   "session that crosses a salt rotation, nothing longer")
    return True, why


def _condition_3(f: Facts) -> tuple[bool, list[str]]:
    not_met = []
    if f.external_ref is not None:
        out = f.external_ref
        not_met.append(
            "a referrer from another site is forwarded as its origin (`https://host/`)"
            if out == f"{EXTERNAL}/"
            else f"a referrer from another site is forwarded (`{f.external_probe}` is sent as "
            f"`{out}`)"
        )
    if "page_referrer" in f.url_event_params:
        not_met.append("`ep.page_referrer` is on `privacy.event_params`, so the referrer leaves "
                       "as an event parameter")
    if not_met:
        return False, not_met
    if treatment_of(f.policy.rule("dr")) is None:
        return True, ["`dr` is dropped, internal referrers included"]
    return True, [f"a referrer from another site is dropped; {internal_referrer(f)}"]


def _condition_4(f: Facts) -> tuple[bool, list[str]]:
    not_met = []
    for name, keys in (("dl", f.page_query), ("dp", f.path_query),
                       ("internal `dr`", f.internal_ref_query)):
        if keys:
            what = f"`{name}`" if not name.startswith("internal") else name
            not_met.append(f"{what} keeps the query keys {code(keys)}")
    if f.external_ref and "?" in f.external_ref:
        not_met.append("an external referrer keeps its query")
    campaign = [n for n in CAMPAIGN if n in f.forwarded]
    if campaign:
        not_met.append(f"the campaign fields {code(campaign)} (UTM values) are forwarded")
    if f.url_event_params:
        names = [f"ep.{n}" for n in f.url_event_params]
        not_met.append(f"{code(names)} carry URLs and are forwarded with their query")
    if not_met:
        return False, not_met
    why = ["page URLs (`dl`, `dp`, internal `dr`) lose their whole query (UTM tags, "
           "click ids, routing keys) and fragment; identifier-like path segments become "
           f"markers; the campaign fields {code(CAMPAIGN)} are dropped"]
    events = [n for n in f.forwarded if n.startswith("ep.")]
    if events:
        carriers = [n for n in events if n[3:] in URL_EVENT_PARAMS] or events
        why.append(f"event parameters whose value is a URL ({code(carriers)}, and any other "
                   "value that is or holds an absolute URL) get the page URL's treatment")
    return True, why


def _condition_5(f: Facts) -> tuple[bool, list[str]]:
    why = ["the User-Agent header is rebuilt from browser family, major version and OS family "
           "only (unknown browsers and systems: a generic string)"]
    dropped = [n for n in FINGERPRINT_PROBES
               if n not in f.fingerprint_open and n not in f.fingerprint_closed]
    if dropped:
        why.append(f"{code(dropped)} are dropped")
    for name in f.fingerprint_closed:
        if name == "sr":
            why.append(f"`sr` is rounded to one of {len(SCREENS)} common screen sizes")
        else:
            why.append(f"`{name}` can only be {closed_set(name)}")
    why.append("`ul` (the browser's language) is kept, as in both profiles")
    if not f.fingerprint_open:
        return True, why
    for name, outs in f.fingerprint_open.items():
        rare = FINGERPRINT_PROBES[name][-1]
        example = f"`{name}={rare}`" if rare in outs else f"`{name}={outs[-1]}`"
        why.insert(0, f"`{name}` is forwarded as sent, with no closed set of values: a rare "
                      f"value survives (e.g. {example}), even where the rebuilt User-Agent "
                      "hides the same rare configuration")
    return False, why


def _condition_6(f: Facts) -> tuple[bool, list[str]]:
    not_met = []
    if f.identifiers_forwarded:
        not_met.append(f"identifiers are forwarded: {code(f.identifiers_forwarded)}")
    clicks = sorted({*f.page_query, *f.internal_ref_query} & set(CLICK_IDS))
    if clicks:
        not_met.append(f"URLs keep the click ids / linker {code(clicks)}")
    cid = f.policy.rule("cid")
    if cid.name != "pseudonym" and treatment_of(cid) is not None:
        not_met.append("the original `cid` is forwarded")
    props = [n for n in f.forwarded if n.startswith(("up.", "upn."))]
    if props:
        not_met.append(f"user properties {code(props)} are forwarded: GA keeps them per user "
                       "across sessions, and the proxy cannot tell whether a value identifies")
    if not_met:
        return False, not_met
    return True, [
        f"{code(n for n in IDENTIFIERS if n != '_uip')} and `sst.*` are dropped",
        f"click ids and the cross-domain linker {code(CLICK_IDS)} go with the URL query",
        "no user property is forwarded",
        f"the only identifier is the pseudonym, which lasts one {rotation(f)} window",
    ]


def _condition_7(f: Facts) -> tuple[bool, list[str]]:
    not_met = []
    if f.loosened:
        listed = ", ".join(f"`{n}: {a}`" for n, a in f.loosened.items())
        not_met.append(f"`privacy.overrides` forward more than the profile: {listed}")
    if "sct" in f.forwarded:
        not_met.append("`sct` (the visitor's session count) is forwarded: a per-visitor counter "
                       "that survives salt rotation, so a rare value links one visitor's "
                       "pseudonyms across windows")
    missing = [d for d in DEFAULT_DETECTORS if d not in f.detectors]
    if missing:
        not_met.append(f"personal-data detectors are switched off: {code(missing)}")
    if not_met:
        return False, not_met
    why = [
        "parameters the policy does not list are dropped",
        f"titles, items, URLs and allow-listed values are scanned ({detectors_phrase(f)})",
        "technical fields pass only with gtag's own shapes, which cannot hold an e-mail "
        "address (a digit-only field would hold a number a site wrote there itself: see "
        "Never forwarded)",
    ]
    params = [n for n in f.forwarded if n.startswith(("ep.", "epn."))]
    if params:
        why.append(f"the allow-listed event parameters {code(params)} are the site's "
                   "choice: scanned, but their meaning is not checked")
    return True, why


def conditions(f: Facts, primary: Collision) -> tuple[Condition, ...]:
    results = [
        _condition_1(f), _condition_2(f, primary), _condition_3(f), _condition_4(f),
        _condition_5(f), _condition_6(f), _condition_7(f),
    ]
    return tuple(
        Condition(i, title, met, _sentences(s[:1].upper() + s[1:] for s in why))
        for i, (title, (met, why)) in enumerate(zip(CNIL_TITLES, results, strict=True), 1)
    )
