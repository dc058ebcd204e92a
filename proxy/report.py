"""The transfer report: what leaves for Google, in what form, to which endpoint, under which
consent rule, and how each of CNIL's proxy conditions is met (privacy-requirements.md §1, §5).

Everything here is derived from the compiled configuration, never from prose: the policy
table of ``compile_policy`` is read rule by rule, and where a rule's effect depends on its
settings (which query keys survive, what an external referrer becomes, whether a card number
fits a shape-checked field) the compiled rule is *run* on fixed probe values, so the report
says what the code does, not what it was meant to do. The tests then check every claim against
the pipeline itself.

The report holds no visitor data: it is built from configuration and synthetic probes only.
``build_report`` returns a ``Report``; ``to_json``, ``to_markdown`` (for a DPIA or record of
processing) and ``to_html`` (a standalone page) render the same content.
"""

from __future__ import annotations

import hashlib
import html
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msgspec

from proxy import __version__
from proxy.config import DRY_RUN, EU_ENDPOINT, Config
from proxy.consent.gate import ConsentGate
from proxy.pipeline import OutboundRequest
from proxy.policy import (
    ALLOW_LIST_PREFIXES,
    BALANCED_QUERY_KEYS,
    CAMPAIGN,
    IDENTIFIER_PREFIXES,
    IDENTIFIERS,
    LARGEST_SCREEN,
    SCREEN_CLASSES,
    SHAPES,
    TEXT_LIMIT,
    TITLE_LIMIT,
    USER_PROPERTY_LIMIT,
    Action,
    EventContext,
    Policy,
    Rule,
    compile_policy,
)
from proxy.regions import expand_regions
from proxy.sanitize.pii import DEFAULT_DETECTORS
from proxy.tag.rewrite import GOOGLE_DOMAINS

# Used when neither a volume is given nor an observed one is known; the report says so.
DEFAULT_DAILY_VISITORS = 10_000
REFERENCE_VOLUMES = (1_000, 10_000, 100_000, 1_000_000)
DAY = 86_400

# Google's collection hosts: region1 is the EU endpoint (collection and processing in the EU).
EU_HOSTS = frozenset({urlsplit(EU_ENDPOINT).hostname or ""})
GOOGLE_HOSTS = re.compile(r"(^|\.)(google-analytics\.com|analytics\.google\.com)$")

CNIL_TITLES = (
    "No IP address reaches the analytics tool",
    "The user identifier is replaced (collisions, changing salt)",
    "External referrers are removed",
    "All URL parameters are removed",
    "Fingerprinting data is reprocessed",
    "No cross-site or lasting identifiers",
    "Anything else that could re-identify is deleted",
)

# Probes: synthetic values the compiled rules are run on. Hosts under .example (RFC 2606).
PAGE = "https://www.site.example"
EXTERNAL = "https://other-site.example"
# Query keys tried on URLs: campaign tags, click ids, the cross-domain linker, routing keys.
CLICK_IDS = ("gclid", "gbraid", "wbraid", "dclid", "fbclid", "msclkid", "_gl", "mc_eid")
ROUTING_KEYS = ("page", "id", "q")
# GA4 event parameters whose values are URLs (enhanced measurement and page fields).
URL_EVENT_PARAMS = frozenset({"page_location", "page_referrer", "link_url", "video_url",
                              "link_domain", "file_name"})
# §2 "never forwarded" values, as a site's own tagging could place them: the same canaries
# the tests inject through the pipeline.
VALUE_CANARIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "email": ("An e-mail address", ("jane.doe@example.com",)),
    # National (trunk 0), North American with and without its 1, international.
    "phone": ("A phone number", ("0612345678", "2125550199", "12125550199", "+442079460958")),
    "card": ("A payment card number (Luhn)", ("4111111111111111",)),
    "iban": ("An IBAN", ("FR7630006000011234567890189",)),
    # A US SSN or Dutch BSN as a field of digits can hold it: nine digits, no separator.
    "national_id": ("A national identity number", ("536221234",)),
}
NEVER_HEADERS = ("Cookie", "X-Forwarded-*", "Referer", "Origin", "Accept-Language", "sec-ch-*")

# Fingerprinting inputs (CNIL condition 5) and the closed value sets a forwarded one may take;
# a field without a closed set must not be forwarded at all. Probes include rare values.
FINGERPRINT_PROBES: dict[str, tuple[str, ...]] = {
    "sr": ("1920x1080", "360x800", "1017x1163", "3589x297"),
    "uaa": ("x86", "arm", "riscv"),
    "uab": ("64", "32"),
    "uafvl": ("Chromium;122.0.6261.69|Not(A:Brand;24.0.0.0",),
    "uamb": ("0", "1"),
    "uam": ("Pixel 8 Pro", "SM-F946B"),
    "uap": ("Windows", "macOS", "Fuchsia"),
    "uapv": ("14.3.1", "0.11.3"),
    "uaw": ("0", "1"),
}
_SCREENS = frozenset(
    f"{a}x{b}"
    for w, h in [*(cls for _, cls in SCREEN_CLASSES), LARGEST_SCREEN]
    for a, b in ((w, h), (h, w))
)
CLOSED_SETS: dict[str, frozenset[str]] = {
    "sr": _SCREENS,
    "uamb": frozenset({"0", "1"}),
    "uaw": frozenset({"0", "1"}),
    "uab": frozenset({"32", "64"}),
}

# Checked by the pipeline before the policy runs (beacon.parse, Pipeline's tid check): a beacon
# with any other value is dropped whole, so these carry nothing but the configured values.
PINNED = ("v", "tid")

_ITEM = re.compile(r"^pr\d+$")
_CODE = re.compile(r"`([^`]+)`")


# ---------------------------------------------------------------------------------------------
# The report's content


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


@dataclass(frozen=True, slots=True)
class Condition:
    id: int
    title: str
    met: bool
    why: str


@dataclass(frozen=True, slots=True)
class Field:
    """Parameters forwarded with one treatment. ``values``: how their values are checked:
    replaced | fixed (a closed set) | scanned (personal-data detectors) | shape (a pattern
    only) | as_sent (no check)."""

    label: str
    params: tuple[str, ...]
    treatment: str  # kept | replaced | scrubbed | generalised | forced
    rule: str
    form: str
    values: str


@dataclass(frozen=True, slots=True)
class NeverItem:
    """One line of the "never forwarded" list. ``holds``: whether this configuration
    guarantees it. ``params``/``prefixes``: names the outbound request never carries
    (``allowed``: the exceptions of a prefix); ``passes``: fields a value kind gets through."""

    item: str
    kind: str  # address | header | parameter | family | unknown | value
    holds: bool
    why: str
    params: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    allowed: tuple[str, ...] = ()
    passes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Report:
    version: str
    fingerprint: str
    profile: str
    measurement_ids: tuple[str, ...]
    endpoint: dict[str, Any]
    consent: dict[str, Any]
    pseudonym: dict[str, Any]
    location: dict[str, Any]
    forwarded_fields: tuple[Field, ...]
    headers: tuple[Field, ...]
    never_forwarded: tuple[NeverItem, ...]
    cnil_conditions: tuple[Condition, ...]
    framing: tuple[dict[str, Any], ...]
    urls: dict[str, Any]
    device: dict[str, Any]
    collisions: tuple[Collision, ...] = field(default=())

    @property
    def region(self) -> str:
        return str(self.endpoint["region"])

    def to_json(self) -> dict[str, Any]:
        def coll(c: Collision) -> dict[str, Any]:
            return {
                "daily_visitors": c.daily_visitors,
                "basis": c.basis,
                "visitors_per_window": c.visitors_per_window,
                "p_visitor_shares_pseudonym": c.p_shared,
                "expected_colliding_visitors": c.colliding,
                "expected_distinct_pseudonyms": c.distinct,
            }

        return {
            "report": "analytics-proxy transfer report",
            "version": self.version,
            "policy_fingerprint": self.fingerprint,
            "profile": self.profile,
            "measurement_ids": list(self.measurement_ids),
            "endpoint": self.endpoint,
            "region": self.region,
            "consent": self.consent,
            "pseudonym": {
                **self.pseudonym,
                "collision": coll(self.collisions[0]),
                "collision_table": [coll(c) for c in self.collisions],
            },
            "location": self.location,
            "urls": self.urls,
            "device": self.device,
            "cnil_conditions": [
                {"id": c.id, "title": c.title, "met": c.met, "why": c.why}
                for c in self.cnil_conditions
            ],
            "framing": list(self.framing),
            "forwarded_fields": [_field_json(f) for f in self.forwarded_fields],
            "forwarded_headers": [_field_json(f) for f in self.headers],
            "never_forwarded": [
                {
                    "item": n.item,
                    "kind": n.kind,
                    "holds": n.holds,
                    "why": n.why,
                    "params": list(n.params),
                    "prefixes": list(n.prefixes),
                    "allowed": list(n.allowed),
                    "passes": list(n.passes),
                }
                for n in self.never_forwarded
            ],
        }

    def to_markdown(self) -> str:
        return _markdown(_document(self))

    def to_html(self) -> str:
        return _html(_document(self), "Transfer report: analytics-proxy → Google Analytics 4")


def _field_json(f: Field) -> dict[str, Any]:
    return {
        "label": f.label,
        "params": list(f.params),
        "treatment": f.treatment,
        "rule": f.rule,
        "form": f.form,
        "values": f.values,
    }


# ---------------------------------------------------------------------------------------------
# Reading the compiled policy


def _probe_pseudonym(value: str) -> str:
    return "0.0"


def apply_rule(rule: Rule, value: str, page_host: str | None = None) -> str | None:
    """What the compiled ``rule`` forwards for ``value`` (None: dropped), on a page of the
    probe site, exactly as the sanitiser would call it."""
    if rule.fn is None:
        return value if rule.action is Action.KEPT else None
    host = page_host if page_host is not None else urlsplit(PAGE).hostname
    return rule.fn(value, EventContext(host, _probe_pseudonym))


def _treatment(rule: Rule) -> str | None:
    """The §5 vocabulary for what a rule does to a value it forwards; None: never forwards."""
    if rule.fn is None:
        return Action.KEPT.value if rule.action is Action.KEPT else None
    # A validating rule (DROPPED when the value is invalid) forwards valid values as they are.
    return Action.KEPT.value if rule.action is Action.DROPPED else rule.action.value


def _family(param: str) -> str:
    if _ITEM.match(param):
        return "items"
    if param.startswith(("ep.", "epn.")):
        return "event parameters"
    if param.startswith(("up.", "upn.")):
        return "user properties"
    if param in CAMPAIGN:
        return "campaign"
    return ""


def _surviving(rule: Rule, prefix: str, keys: Iterable[str]) -> tuple[str, ...]:
    """The query keys ``rule`` forwards when a URL (``prefix`` + ``key=x``) carries them."""
    kept = []
    for key in keys:
        out = apply_rule(rule, f"{prefix}{key}=x") or ""
        if key in (k for k, _ in parse_qsl(out.partition("?")[2], keep_blank_values=True)):
            kept.append(key)
    return tuple(kept)


@dataclass(frozen=True)
class _Facts:
    """What the compiled policy does, found by reading and running its rules once."""

    config: Config
    policy: Policy
    base: Policy  # the profile without privacy.overrides, to see what an override loosened
    detectors: tuple[str, ...]
    forwarded: dict[str, Rule]  # table entries that can forward a value
    dropped: dict[str, Rule]
    page_query: tuple[str, ...]  # query keys dl keeps
    path_query: tuple[str, ...]  # query keys dp keeps
    internal_ref_query: tuple[str, ...]  # query keys an internal dr keeps
    external_ref: str | None  # what an external referrer becomes
    external_probe: str
    url_event_params: tuple[str, ...]
    fingerprint_open: dict[str, tuple[str, ...]]  # forwarded without a closed set: probes out
    fingerprint_closed: tuple[str, ...]  # forwarded, reduced to a closed set
    identifiers_forwarded: tuple[str, ...]
    loosened: dict[str, str]  # override name -> action, where it forwards more than the profile
    passes: dict[str, tuple[str, ...]]  # value kind -> params a canary survives in

    @property
    def bits(self) -> int:
        return self.config.privacy.pseudonym.bits


def _facts(config: Config) -> _Facts:
    privacy = config.privacy
    policy = compile_policy(privacy, config.allowed_origins)
    base = compile_policy(msgspec.structs.replace(privacy, overrides={}), config.allowed_origins)
    detectors = tuple(privacy.pii_detectors) if privacy.pii_detectors is not None else (
        DEFAULT_DETECTORS
    )
    forwarded = {n: r for n, r in policy.table.items() if _treatment(r) is not None}
    dropped = {n: r for n, r in policy.table.items() if _treatment(r) is None}

    keys = list(dict.fromkeys(
        [*BALANCED_QUERY_KEYS, *privacy.url_query_allowlist, *CLICK_IDS, *ROUTING_KEYS]
    ))
    # One key per probe: a rule that cuts long values must not hide a key that survives.
    page_query = _surviving(policy.rule("dl"), f"{PAGE}/landing?", keys)
    path_query = _surviving(policy.rule("dp"), "/landing?", keys)
    internal_ref_query = _surviving(policy.rule("dr"), f"{PAGE}/from?", keys)
    external_probe = f"{EXTERNAL}/article/42?utm_source=x"
    external_ref = apply_rule(policy.rule("dr"), external_probe)

    fingerprint_open: dict[str, tuple[str, ...]] = {}
    fingerprint_closed: list[str] = []
    for name, probes in FINGERPRINT_PROBES.items():
        outs = tuple(o for o in (apply_rule(policy.rule(name), p) for p in probes) if o)
        if not outs:
            continue
        if name in CLOSED_SETS and set(outs) <= CLOSED_SETS[name]:
            fingerprint_closed.append(name)
        else:
            fingerprint_open[name] = outs

    identifiers = [*IDENTIFIERS, *(f"{p}x" for p in IDENTIFIER_PREFIXES)]
    identifiers_forwarded = tuple(n for n in identifiers if _treatment(policy.rule(n)))

    loosened: dict[str, str] = {}
    for name, action in privacy.overrides.items():
        before = base.rule(name)
        as_sent = before.fn is None and before.action is Action.KEPT
        # Keep is looser than anything but keep; scrub than anything but scrubbing text.
        if (action == "keep" and not as_sent) or (action == "scrub" and before.name != "pii"):
            loosened[name] = action

    passes = {
        kind: tuple(
            n for n, r in forwarded.items()
            if any(_lets_through(n, r, canary, keys) for canary in canaries)
        )
        for kind, (_, canaries) in VALUE_CANARIES.items()
    }
    return _Facts(
        config=config,
        policy=policy,
        base=base,
        detectors=detectors,
        forwarded=forwarded,
        dropped=dropped,
        page_query=page_query,
        path_query=path_query,
        internal_ref_query=internal_ref_query,
        external_ref=external_ref,
        external_probe=external_probe,
        # Event parameters that forward a URL's query, found by running each rule on a URL:
        # a value that is a URL gets the page URL's treatment unless an override keeps it.
        url_event_params=tuple(
            n[3:] for n, r in forwarded.items()
            if n.startswith("ep.") and _surviving(r, f"{PAGE}/landing?", keys)
        ),
        fingerprint_open=fingerprint_open,
        fingerprint_closed=tuple(fingerprint_closed),
        identifiers_forwarded=identifiers_forwarded,
        loosened=loosened,
        passes=passes,
    )


def _lets_through(name: str, rule: Rule, canary: str, query_keys: Iterable[str]) -> bool:
    """Whether ``canary`` survives ``rule`` in any of the places a site could put it."""
    if name in PINNED:
        return False
    if name in ("dl", "dr"):
        values = [f"{PAGE}/{canary}", *(f"{PAGE}/p?{k}={canary}" for k in query_keys)]
    elif name == "dp":
        values = [f"/{canary}"]
    elif _ITEM.match(name):
        values = [f"id{canary}", f"nm{canary}"]
    elif name in SHAPES:
        # Alone, and glued inside a tag-build token as gtag writes digit runs there.
        values = [canary, f"45je{canary}z8"]
    else:
        values = [canary]
    return any(canary in (apply_rule(rule, v) or "") for v in values)


# ---------------------------------------------------------------------------------------------
# What leaves


def _label(names: Sequence[str]) -> str:
    if len(names) > 2 and all(_ITEM.match(n) for n in names):
        return f"{names[0]}…{names[-1]}"
    return " ".join(names)


def _code(names: Iterable[str]) -> str:
    return "`" + " ".join(names) + "`"


def _detectors(f: _Facts) -> str:
    return ", ".join(f.detectors) if f.detectors else "none enabled"


def _rotation(f: _Facts) -> str:
    return f.config.privacy.pseudonym.rotation


def _form(name: str, rule: Rule, f: _Facts) -> tuple[str, str]:
    """Plain words for what ``rule`` sends, and how its values are checked."""
    kind = rule.name
    scanned = f"personal values replaced by tokens ({_detectors(f)})"
    if name == "v" and kind != "override":
        return "always `2`: a beacon of any other protocol version is dropped", "fixed"
    if name == "tid" and kind != "override":
        return (f"one of {_code(f.config.measurement_ids)}: a beacon for any other measurement "
                "ID is dropped", "fixed")
    if kind == "override":
        if rule.fn is None:
            return "as sent by the browser, unchecked (`privacy.overrides`: keep)", "as_sent"
        return f"free text, {scanned} (`privacy.overrides`: scrub)", "scanned"
    if kind == "technical":
        return (
            "as sent while it has the shape gtag gives it (digits, or a short token without "
            "an IP address); otherwise dropped",
            "shape",
        )
    if kind == "consent_flag":
        return "as sent while well-formed: the Consent Mode state Google must honour", "shape"
    if kind == "event_name":
        return "as sent while a valid event name; otherwise dropped", "shape"
    if kind == "pseudonym":
        return (
            f"replaced by HMAC-SHA256 of `tid|cid` under a salt that changes every "
            f"{_rotation(f)}, cut to {f.bits} bits, sent as `<number>.<window start>`",
            "replaced",
        )
    if kind == "url" and name == "dl":
        return (
            "scheme, host and path; path segments that look like identifiers become markers "
            f"(`:id`, `:email`, …); fragment dropped; {_query_phrase(f.page_query)}",
            "scanned",
        )
    if kind == "url":
        return (
            "the path, identifier-like segments replaced by markers; "
            + _query_phrase(f.path_query),
            "scanned",
        )
    if kind == "hostname":
        return "the host name, lower-cased, while it has a host name's shape", "shape"
    if kind == "referrer":
        return f"{_internal_referrer(f)}; {_external_referrer(f)}", "scanned"
    if kind == "pii":
        family = _family(name)
        limit = (
            TITLE_LIMIT if name == "dt"
            else USER_PROPERTY_LIMIT if family == "user properties"
            else TEXT_LIMIT
        )
        return f"free text, {scanned}, cut to {limit} characters", "scanned"
    if kind == "session_count":
        return "as sent while a whole number of up to 6 digits", "shape"
    if kind == "screen_class":
        return (
            f"rounded to one of {len(_SCREENS)} common screen sizes (by its long side, "
            "orientation kept)",
            "fixed",
        )
    if kind == "client_hint":
        if name in CLOSED_SETS:
            return f"only {_closed_set(name)}", "fixed"
        return "as sent while it has the expected shape (letters and spaces)", "shape"
    if kind == "item":
        return (
            "standard item fields (`id nm br ca va pr qt …`) with values scanned, "
            f"{scanned}; custom `kN`/`vN` fields dropped",
            "scanned",
        )
    if kind == "number":
        return "numbers only; anything else dropped", "shape"
    if kind == "debug":
        return "only the value `1` (sends the hit to DebugView)", "fixed"
    return f"transformed by the rule `{kind}`", "unclassified"


def _closed_set(name: str) -> str:
    return " or ".join(f"`{v}`" for v in sorted(CLOSED_SETS[name]))


def _query_phrase(keys: Sequence[str]) -> str:
    if not keys:
        return "query dropped whole"
    return f"query: only {_code(keys)} kept, values scanned; every other key dropped"


def _internal_referrer(f: _Facts) -> str:
    hosts = [urlsplit(o).hostname for o in f.config.allowed_origins]
    where = "the page's own host" + (f" or {_code(h for h in hosts if h)}" if hosts else "")
    return f"from {where}: as `dl`, {_query_phrase(f.internal_ref_query)}"


def _external_referrer(f: _Facts) -> str:
    out = f.external_ref
    if out is None:
        return "from any other site: dropped"
    if out == f"{EXTERNAL}/":
        return "from any other site: its origin only (`https://host/`)"
    return f"from any other site: forwarded (`{f.external_probe}` is sent as `{out}`)"


_SPLIT_RULES = frozenset({"url", "client_hint", "referrer", "hostname", "pseudonym"})


def _forwarded_fields(f: _Facts) -> tuple[Field, ...]:
    groups: dict[tuple[str, str, str, str], list[str]] = {}
    rules: dict[tuple[str, str, str, str], Rule] = {}
    # The pinned ones first: what identifies the protocol and the property.
    for name, rule in sorted(f.forwarded.items(), key=lambda item: item[0] not in PINNED):
        key = (
            rule.name,
            _treatment(rule) or "",
            _family(name),
            name if rule.name in _SPLIT_RULES or name in PINNED else str(rule.action),
        )
        groups.setdefault(key, []).append(name)
        rules[key] = rule
    fields = []
    for key, names in groups.items():
        form, values = _form(names[0], rules[key], f)
        fields.append(Field(_label(names), tuple(names), key[1], key[0], form, values))
    for name, value in f.policy.forced.items():
        what = "no ad personalisation" if name == "npa" else "set by the proxy"
        fields.append(Field(name, (name,), "forced", "proxy_set", f"always `{value}`: {what}",
                            "fixed"))
    location = _location_form(f.config)
    if location is not None:
        fields.append(Field("_uip", ("_uip",), "forced", "location", location, "derived"))
    internal = f.config.internal_traffic
    if internal.networks:
        fields.append(Field(
            "tt", ("tt",), "forced", "internal_traffic",
            f"`{internal.traffic_type}` on beacons from the {len(internal.networks)} configured "
            "office/VPN networks (matched in memory; the address is not sent); absent otherwise",
            "fixed",
        ))
    return tuple(fields)


def _location_form(config: Config) -> str | None:
    loc = config.privacy.location
    if loc.mode == "truncated":
        return (
            f"the visitor's network address: IPv4 /{loc.ipv4_prefix}, IPv6 /{loc.ipv6_prefix} "
            "(host part zeroed)"
        )
    if loc.mode == "country":
        return (
            "one representative address per country, taken from the geo database's own "
            "networks: only the country leaves; nothing when the country is unknown or the "
            "index of representative addresses is not built yet"
        )
    if loc.mode == "mesh":
        return (
            "the representative address of the finest city → region → country cell that saw "
            f"at least {loc.k} distinct pseudonymous visitors in the last {loc.window}; "
            "nothing when even the country saw fewer (or before the index of representative "
            "addresses is built)"
        )
    return None


_HEADER_FORMS = {
    "user-agent": (
        "generalised",
        "rebuilt from browser family, major version and OS family; OS version, device model, "
        "build ids and in-app tokens are gone; unknown browsers and systems get a generic string",
    ),
    "content-type": ("forced", "always `text/plain;charset=UTF-8`"),
}


def _outbound_headers() -> tuple[str, ...]:
    # The pipeline's own header set: what the forwarder sends with every request.
    return tuple(OutboundRequest("", "", "").headers())


def _header_fields() -> tuple[Field, ...]:
    fields = []
    for name in _outbound_headers():
        treatment, form = _HEADER_FORMS.get(name.lower(), ("forced", "set by the proxy"))
        fields.append(Field(name, (name,), treatment, "header", form, "fixed"))
    return tuple(fields)


# ---------------------------------------------------------------------------------------------
# What never leaves


_DROP_WHY = {
    "identifier": "identifiers: user id, Firebase and enhanced-conversion data, linker and "
    "click cookies, address and region, ad consent strings",
    "proxy_set": "set by the proxy only: a value the browser sends is dropped",
    "debug": "the DebugView flag (`privacy.forward_debug` is off)",
    "fingerprint": "the screen resolution, a fingerprinting input",
    "client_hint": "User-Agent client hints, fingerprinting inputs",
    "campaign": "campaign fields (UTM values)",
    "session_count": "the visitor's session count, a counter that outlives salt rotation",
    "override": "dropped by `privacy.overrides`",
}


def _never_forwarded(f: _Facts) -> tuple[NeverItem, ...]:
    policy, loc = f.policy, f.config.privacy.location
    headers = {h.lower() for h in _outbound_headers()}
    uip_dropped = _treatment(policy.rule("_uip")) is None
    address_why = {
        "omit": "no address at all: `_uip` is not sent",
        "truncated": f"not whole: `_uip` carries its network address (IPv4 /{loc.ipv4_prefix}, "
        f"IPv6 /{loc.ipv6_prefix})",
        "country": "`_uip` carries a representative address of the visitor's country",
        "mesh": "`_uip` carries the representative address of a cell of at least "
        f"{loc.k} visitors",
    }[loc.mode]
    items = [
        NeverItem(
            "The visitor's IP address", "address", uip_dropped,
            (address_why if uip_dropped else "the browser's own `_uip` is forwarded")
            + "; it is used in memory only (geo lookup, rate limiting), never stored",
        ),
        NeverItem("Any cookie", "header", "cookie" not in headers,
                  f"outbound requests carry only {_code(_outbound_headers())}"),
    ]
    uid = policy.rule("uid")
    items.append(NeverItem(
        "`uid` in clear", "parameter", _treatment(uid) is None,
        "dropped" if _treatment(uid) is None else f"forwarded ({uid.name})",
        params=("uid",) if _treatment(uid) is None else (),
    ))
    cid = policy.rule("cid")
    cid_ok = cid.name == "pseudonym" or _treatment(cid) is None
    items.append(NeverItem(
        "The original `cid`", "value", cid_ok,
        "replaced by the rotating pseudonym" if cid.name == "pseudonym"
        else "dropped" if cid_ok else f"forwarded ({cid.name}: {_treatment(cid)})",
    ))
    scanned = [n for n, r in f.forwarded.items() if _form(n, r, f)[1] == "scanned"]
    for kind, (label, _) in VALUE_CANARIES.items():
        passes = f.passes[kind]
        why = f"scanned in every text field ({_code(_short_list(scanned))})"
        if passes:
            why += (
                f"; not guaranteed in {_code(passes)}: these are forwarded by shape only "
                "(gtag fills them with timestamps, counters or tokens), and a value of that "
                "kind a site wrote there itself would pass"
            )
        items.append(NeverItem(label, "value", not passes, why, passes=passes))
    for header in NEVER_HEADERS[1:]:
        prefix = header.lower().rstrip("*")
        present = any(h.startswith(prefix) if header.endswith("*") else h == prefix
                      for h in headers)
        items.append(NeverItem(f"`{header}` header", "header", not present,
                               "the request to Google is rebuilt; no browser header is copied"))

    # Names the proxy sets itself leave with the proxy's value; the browser's is dropped.
    own = set(policy.forced) | {
        n for n, present in (("_uip", _location_form(f.config) is not None),
                             ("tt", bool(f.config.internal_traffic.networks))) if present
    }
    groups: dict[tuple[str, str], list[str]] = {}
    for name, rule in f.dropped.items():
        groups.setdefault((rule.name, _family(name)), []).append(name)
    for (rule_name, _), names in groups.items():
        why = _DROP_WHY.get(rule_name, f"dropped by the rule `{rule_name}`")
        replaced = [n for n in names if n in own]
        never = [n for n in names if n not in own]
        if replaced:
            why += (f"; {_code(replaced)} sent by the browser is dropped too, and the proxy "
                    "sends its own (see What leaves)")
        if never:
            items.append(NeverItem(_code([_label(never)]), "parameter", True, why,
                                   params=tuple(never)))
    sst = _treatment(policy.rule(f"{IDENTIFIER_PREFIXES[0]}x")) is None
    items.append(NeverItem(_code(p + "*" for p in IDENTIFIER_PREFIXES), "family", sst,
                           "server-side tagging data", prefixes=IDENTIFIER_PREFIXES))
    for prefixes, setting in ((ALLOW_LIST_PREFIXES[:2], "event_params"),
                              (ALLOW_LIST_PREFIXES[2:], "user_properties")):
        allowed = tuple(n for n in f.forwarded if n.startswith(prefixes))
        if setting == "user_properties" and f.policy.profile != "balanced":
            why = "not forwarded in the strict profile"
        else:
            why = f"except the names on `privacy.{setting}`"
        if allowed:
            why += f"; forwarded: {_code(allowed)}"
        items.append(NeverItem(_code(p + "*" for p in prefixes), "family", True, why,
                               prefixes=prefixes, allowed=allowed))
    items.append(NeverItem("Any other parameter", "unknown", True,
                           "a parameter the policy table does not list is dropped"))
    return tuple(items)


def _short_list(names: Sequence[str], limit: int = 8) -> list[str]:
    names = [_label([n]) for n in names]
    items = [n for n in names if _ITEM.match(n)]
    rest = [n for n in names if not _ITEM.match(n)]
    out = rest[:limit] + ([f"{items[0]}…{items[-1]}"] if items else [])
    return out + (["…"] if len(rest) > limit else [])


# ---------------------------------------------------------------------------------------------
# CNIL's conditions (privacy-requirements.md §1), in order


def _sentences(parts: Iterable[str]) -> str:
    return " ".join(p if p.endswith(".") else p + "." for p in parts if p)


def _condition_1(f: _Facts) -> tuple[bool, list[str]]:
    loc, config = f.config.privacy.location, f.config
    why: list[str] = []
    if _treatment(f.policy.rule("_uip")) is not None:
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


def _condition_2(f: _Facts, primary: Collision) -> tuple[bool, list[str]]:
    cid, pseudo = f.policy.rule("cid"), f.config.privacy.pseudonym
    if cid.name != "pseudonym":
        if _treatment(cid) is None:
            return True, ["no client id is forwarded at all (`privacy.overrides`: drop); "
                          "Google cannot count users"]
        return False, [f"`cid` is forwarded {_treatment(cid)} (`privacy.overrides`): the "
                       "original client id, from a cookie that lasts up to two years, leaves"]
    why = [
        f"`cid` is replaced by HMAC-SHA256 of (tid, cid) under a salt that changes every "
        f"{pseudo.rotation} and is destroyed when its window ends, cut to {pseudo.bits} bits",
        f"at {primary.visitors_per_window:,} visitors per window ({primary.basis} volume), a "
        f"given visitor shares its pseudonym with another with probability "
        f"{_probability(primary.p_shared)}; about {primary.colliding:.3g} visitors are "
        "expected to share theirs",
    ]
    if pseudo.cookieless:
        why.append("a beacon without `cid` gets one derived from its network and generalised "
                   "browser, so visitors of one network with the same browser share it")
    if "sid" in f.forwarded:
        why.append("`sid` (the session's start time) is kept: it links the two pseudonyms of a "
                   "session that crosses a salt rotation, nothing longer")
    return True, why


def _condition_3(f: _Facts) -> tuple[bool, list[str]]:
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
    if _treatment(f.policy.rule("dr")) is None:
        return True, ["`dr` is dropped, internal referrers included"]
    return True, [f"a referrer from another site is dropped; {_internal_referrer(f)}"]


def _condition_4(f: _Facts) -> tuple[bool, list[str]]:
    not_met = []
    for name, keys in (("dl", f.page_query), ("dp", f.path_query),
                       ("internal `dr`", f.internal_ref_query)):
        if keys:
            what = f"`{name}`" if not name.startswith("internal") else name
            not_met.append(f"{what} keeps the query keys {_code(keys)}")
    if f.external_ref and "?" in f.external_ref:
        not_met.append("an external referrer keeps its query")
    campaign = [n for n in CAMPAIGN if n in f.forwarded]
    if campaign:
        not_met.append(f"the campaign fields {_code(campaign)} (UTM values) are forwarded")
    if f.url_event_params:
        names = [f"ep.{n}" for n in f.url_event_params]
        not_met.append(f"{_code(names)} carry URLs and are forwarded with their query")
    if not_met:
        return False, not_met
    why = ["page URLs (`dl`, `dp`, internal `dr`) lose their whole query (UTM tags, "
           "click ids, routing keys) and fragment; identifier-like path segments become "
           f"markers; the campaign fields {_code(CAMPAIGN)} are dropped"]
    events = [n for n in f.forwarded if n.startswith("ep.")]
    if events:
        carriers = [n for n in events if n[3:] in URL_EVENT_PARAMS] or events
        why.append(f"event parameters whose value is a URL ({_code(carriers)}, and any other "
                   "value that is or holds an absolute URL) get the page URL's treatment")
    return True, why


def _condition_5(f: _Facts) -> tuple[bool, list[str]]:
    why = ["the User-Agent header is rebuilt from browser family, major version and OS family "
           "only (unknown browsers and systems: a generic string)"]
    dropped = [n for n in FINGERPRINT_PROBES
               if n not in f.fingerprint_open and n not in f.fingerprint_closed]
    if dropped:
        why.append(f"{_code(dropped)} are dropped")
    for name in f.fingerprint_closed:
        if name == "sr":
            why.append(f"`sr` is rounded to one of {len(_SCREENS)} common screen sizes")
        else:
            why.append(f"`{name}` can only be {_closed_set(name)}")
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


def _condition_6(f: _Facts) -> tuple[bool, list[str]]:
    not_met = []
    if f.identifiers_forwarded:
        not_met.append(f"identifiers are forwarded: {_code(f.identifiers_forwarded)}")
    clicks = sorted({*f.page_query, *f.internal_ref_query} & set(CLICK_IDS))
    if clicks:
        not_met.append(f"URLs keep the click ids / linker {_code(clicks)}")
    cid = f.policy.rule("cid")
    if cid.name != "pseudonym" and _treatment(cid) is not None:
        not_met.append("the original `cid` is forwarded")
    props = [n for n in f.forwarded if n.startswith(("up.", "upn."))]
    if props:
        not_met.append(f"user properties {_code(props)} are forwarded: GA keeps them per user "
                       "across sessions, and the proxy cannot tell whether a value identifies")
    if not_met:
        return False, not_met
    return True, [
        f"{_code(n for n in IDENTIFIERS if n != '_uip')} and `sst.*` are dropped",
        f"click ids and the cross-domain linker {_code(CLICK_IDS)} go with the URL query",
        "no user property is forwarded",
        f"the only identifier is the pseudonym, which lasts one {_rotation(f)} window",
    ]


def _condition_7(f: _Facts) -> tuple[bool, list[str]]:
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
        not_met.append(f"personal-data detectors are switched off: {_code(missing)}")
    if not_met:
        return False, not_met
    why = [
        "parameters the policy does not list are dropped",
        f"titles, items, URLs and allow-listed values are scanned ({_detectors(f)})",
        "technical fields pass only with gtag's own shapes, which cannot hold an e-mail "
        "address (a digit-only field would hold a number a site wrote there itself: see "
        "Never forwarded)",
    ]
    params = [n for n in f.forwarded if n.startswith(("ep.", "epn."))]
    if params:
        why.append(f"the allow-listed event parameters {_code(params)} are the site's "
                   "choice: scanned, but their meaning is not checked")
    return True, why


def _conditions(f: _Facts, primary: Collision) -> tuple[Condition, ...]:
    results = [
        _condition_1(f), _condition_2(f, primary), _condition_3(f), _condition_4(f),
        _condition_5(f), _condition_6(f), _condition_7(f),
    ]
    return tuple(
        Condition(i, title, met, _sentences(s[:1].upper() + s[1:] for s in why))
        for i, (title, (met, why)) in enumerate(zip(CNIL_TITLES, results, strict=True), 1)
    )


# ---------------------------------------------------------------------------------------------
# Endpoint, consent, pseudonym, location


def _endpoint(config: Config) -> dict[str, Any]:
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


def _consent(config: Config) -> dict[str, Any]:
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


def _collisions(config: Config, daily_visitors: int | None,
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


def _pseudonym(config: Config, primary: Collision) -> dict[str, Any]:
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


def _location(config: Config) -> dict[str, Any]:
    loc = config.privacy.location
    out: dict[str, Any] = {
        "mode": loc.mode,
        "sent": _location_form(config) or "nothing: Google places every visitor at the "
        "proxy's own location",
        "meets_condition_1": loc.mode in ("omit", "country", "mesh"),
        "geo_database": bool(config.geo.database),
    }
    if loc.mode == "truncated":
        out |= {"ipv4_prefix": loc.ipv4_prefix, "ipv6_prefix": loc.ipv6_prefix}
    if loc.mode == "mesh":
        out |= {"k": loc.k, "window": loc.window}
    return out


def _framing(endpoint: dict[str, Any], config: Config) -> tuple[dict[str, Any], ...]:
    origins = (f"beacons are accepted only from {_code(config.allowed_origins)}"
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


def _urls(f: _Facts) -> dict[str, Any]:
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


def _device(f: _Facts) -> dict[str, Any]:
    return {
        "user_agent": "rebuilt",
        "dropped": [n for n in FINGERPRINT_PROBES
                    if n not in f.fingerprint_open and n not in f.fingerprint_closed],
        "reduced": {n: sorted(CLOSED_SETS[n]) for n in f.fingerprint_closed},
        "as_sent": list(f.fingerprint_open),
    }


def _fingerprint(config: Config) -> str:
    # The parts the report derives from, without secrets (admin token, Redis URL).
    parts = {
        "privacy": config.privacy,
        "consent": config.consent,
        "measurement_ids": config.measurement_ids,
        "allowed_origins": config.allowed_origins,
        "upstream": config.upstream.url,
        "internal_traffic": config.internal_traffic,
        "geo": bool(config.geo.database),
    }
    return hashlib.sha256(msgspec.json.encode(parts)).hexdigest()[:16]


def _probability(p: float) -> str:
    if p == 0:
        return "0"
    return f"{p:.3g} ({p * 100:.3g} %)"


def build_report(config: Config, daily_visitors: int | None = None,
                 observed: int | None = None) -> Report:
    """The report for ``config``. ``daily_visitors``: the volume to state collisions at;
    ``observed``: the proxy's own measured daily volume, when it has one. Neither: an
    illustrative volume, labelled as such."""
    for name, value in (("daily_visitors", daily_visitors), ("observed", observed)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1")
    facts = _facts(config)
    collisions = _collisions(config, daily_visitors, observed)
    endpoint = _endpoint(config)
    return Report(
        version=__version__,
        fingerprint=_fingerprint(config),
        profile=config.privacy.profile,
        measurement_ids=tuple(config.measurement_ids),
        endpoint=endpoint,
        consent=_consent(config),
        pseudonym=_pseudonym(config, collisions[0]),
        location=_location(config),
        forwarded_fields=_forwarded_fields(facts),
        headers=_header_fields(),
        never_forwarded=_never_forwarded(facts),
        cnil_conditions=_conditions(facts, collisions[0]),
        framing=_framing(endpoint, config),
        urls=_urls(facts),
        device=_device(facts),
        collisions=collisions,
    )


# ---------------------------------------------------------------------------------------------
# One document, two renderings. Text marks code with backticks; nothing else is markup.


@dataclass(frozen=True, slots=True)
class _Block:
    kind: str  # h1 | h2 | p | ul | table
    text: str = ""
    header: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    items: tuple[str, ...] = ()


def _yes(value: bool | None, none: str = "not decided here") -> str:
    return none if value is None else ("yes" if value else "no")


def _document(r: Report) -> list[_Block]:
    blocks: list[_Block] = []

    def h2(text: str) -> None:
        blocks.append(_Block("h2", text))

    def p(text: str) -> None:
        blocks.append(_Block("p", text))

    def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
        blocks.append(_Block("table", header=tuple(header), rows=tuple(tuple(x) for x in rows)))

    blocks.append(_Block("h1", "Transfer report: analytics-proxy → Google Analytics 4"))
    p(f"Derived from the compiled configuration by `analytics-proxy report` (version "
      f"{r.version}, policy fingerprint `{r.fingerprint}`): it states what the proxy's code "
      f"does with this configuration. Privacy profile: `{r.profile}`.")

    met = [c for c in r.cnil_conditions if c.met]
    unmet = [c for c in r.cnil_conditions if not c.met]
    primary = r.collisions[0]
    consent, endpoint = r.consent, r.endpoint
    defaults = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in consent["defaults"].items())
    h2("Summary")
    table(("", "This configuration"), [
        ("Recipient", f"Google Analytics 4, measurement IDs {_code(r.measurement_ids)}"),
        ("Endpoint", f"`{endpoint['url']}`, {endpoint['why']}"),
        ("Region", endpoint["region"] + (" (dry run)" if endpoint["dry_run"] else "")),
        ("Consent", f"{len(consent['sources'])} consent sources; GPC: {consent['gpc']}, "
                    f"DNT: {consent['dnt']}; without a signal: {defaults}"),
        ("Pseudonym", f"{r.pseudonym['bits']} bits, new salt every {r.pseudonym['rotation']}; "
                      f"a visitor shares its pseudonym with probability "
                      f"{_probability(primary.p_shared)} at {primary.daily_visitors:,} visitors "
                      f"a day ({primary.basis})"),
        ("Location sent", f"`{r.location['mode']}`: {r.location['sent']}"),
        ("CNIL conditions", f"{len(met)} of {len(r.cnil_conditions)} met"
         + (f"; not met: {', '.join(str(c.id) for c in unmet)}" if unmet else "")),
    ])

    h2("CNIL proxy conditions")
    p("The seven conditions CNIL sets for an analytics proxy (June 2022), in its order, each "
      "judged from the compiled policy.")
    table(("#", "Condition", "Met", "Why"),
          [(str(c.id), c.title, _yes(c.met), c.why) for c in r.cnil_conditions])
    p("Framing conditions:")
    table(("Condition", "Met", "Why"), [
        (fr["title"], _yes(fr["met"], "n/a (dry run)" if endpoint["dry_run"] and "EU" in
                           fr["title"] else "not decided here"), _cap(fr["why"]))
        for fr in r.framing
    ])

    h2("What leaves, in what form")
    p("Every parameter Google can receive from the proxy, and what the proxy does to it. "
      "Anything not listed here is dropped.")
    table(("Parameter(s)", "Treatment", "Sent to Google"),
          [(f"`{f.label}`", f.treatment, _cap(f.form)) for f in r.forwarded_fields])
    p("Headers of the request to Google (no other header is sent):")
    table(("Header", "Treatment", "Sent to Google"),
          [(f"`{f.label}`", f.treatment, _cap(f.form)) for f in r.headers])

    h2("Never forwarded")
    p("The never-forwarded list of the privacy requirements, checked against this "
      "configuration, then every parameter this configuration drops.")
    table(("Item", "Holds", "How"),
          [(n.item, _yes(n.holds), _cap(n.why)) for n in r.never_forwarded])

    h2("Consent")
    p(f"Sources read on every beacon, in order: {_code(consent['sources'])}. The rule:")
    blocks.append(_Block("ul", items=tuple(_cap(s) + "." for s in consent["rule"])))
    p(_cap(consent["regime_lookup"]) + ".")
    regimes = consent["regimes"]
    table(("Regime", "Where", "Without a signal"), [
        ("opt-in", _where(regimes["opt_in"]), consent["defaults"]["opt_in"]),
        ("opt-out", _where(regimes["opt_out"]), consent["defaults"]["opt_out"]),
        ("other", "every other country", consent["defaults"]["other"]),
        ("unknown", "country not known", consent["defaults"]["unknown"]),
    ])

    h2("Pseudonymous client id")
    ps = r.pseudonym
    p(f"{ps['algorithm']}; the salt changes every {ps['rotation']} and is destroyed when its "
      "window ends, so pseudonyms do not link across windows. Collisions are stated at "
      f"{ps['volume']}. {ps['formula']}; {ps['window_note']}.")
    table(("Visitors a day", "Basis", "Per window", "P(a visitor shares its pseudonym)",
           "Expected visitors sharing", "Expected distinct pseudonyms"),
          [(f"{c.daily_visitors:,}", c.basis, f"{c.visitors_per_window:,}",
            _probability(c.p_shared), f"{c.colliding:.3g}", f"{c.distinct:,.0f}")
           for c in r.collisions])

    h2("Location")
    loc = r.location
    p(f"`privacy.location.mode: {loc['mode']}`: {loc['sent']}. CNIL condition 1: "
      f"{'met' if loc['meets_condition_1'] else 'not met'}.")
    return blocks


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _where(regime: dict[str, Any]) -> str:
    configured, codes = regime["configured"], regime["codes"]
    text = _code(configured) if configured else "nowhere"
    return text + (f" ({len(codes)} codes)" if len(codes) != len(configured) else "")


def _md_inline(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(blocks: Sequence[_Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if b.kind == "h1":
            out.append(f"# {b.text}")
        elif b.kind == "h2":
            out.append(f"## {b.text}")
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "ul":
            out.append("\n".join(f"- {_md_inline(i)}" for i in b.items))
        else:
            lines = [
                "| " + " | ".join(_md_inline(h) for h in b.header) + " |",
                "|" + "|".join("---" for _ in b.header) + "|",
                *("| " + " | ".join(_md_inline(c) for c in row) + " |" for row in b.rows),
            ]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


_STYLE = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;max-width:72rem;margin:2rem auto;
padding:0 1rem;color:#1b1b1b}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1rem}
th,td{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}code{font-size:.9em;background:#f3f3f3;padding:0 .2em;
overflow-wrap:anywhere}td.yes{color:#1a6b1a;font-weight:600}td.no{color:#a31515;font-weight:600}
"""


def _html_inline(text: str) -> str:
    return _CODE.sub(r"<code>\1</code>", html.escape(text, quote=True))


def _html(blocks: Sequence[_Block], title: str) -> str:
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
    ]
    for b in blocks:
        if b.kind in ("h1", "h2", "p"):
            out.append(f"<{b.kind}>{_html_inline(b.text)}</{b.kind}>")
        elif b.kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_html_inline(i)}</li>" for i in b.items)
                       + "</ul>")
        else:
            out.append("<table><thead><tr>"
                       + "".join(f"<th>{_html_inline(h)}</th>" for h in b.header)
                       + "</tr></thead><tbody>")
            for row in b.rows:
                out.append("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>")
            out.append("</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _html_cell(text: str) -> str:
    css = f' class="{text}"' if text in ("yes", "no") else ""
    return f"<td{css}>{_html_inline(text)}</td>"


def render(report: Report, fmt: str) -> str:
    """``md`` | ``html`` | ``json``."""
    if fmt == "md":
        return report.to_markdown()
    if fmt == "html":
        return report.to_html()
    if fmt == "json":
        import json

        return json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n"
    raise ValueError(f"unknown format {fmt!r}")

