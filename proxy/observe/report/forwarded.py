"""What leaves for Google, in what form, and what never leaves: the report's field tables,
read from the compiled policy and the pipeline's own outbound headers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from proxy.config import Config
from proxy.delivery.outbound import OutboundRequest
from proxy.observe.report.facts import (
    CLOSED_SETS,
    EXTERNAL,
    ITEM,
    PINNED,
    SCREENS,
    VALUE_CANARIES,
    Facts,
    closed_set,
    code,
    detectors_phrase,
    family_of,
    internal_referrer,
    label_of,
    query_phrase,
    rotation,
    treatment_of,
)
from proxy.sanitize.policy import (
    ALLOW_LIST_PREFIXES,
    IDENTIFIER_PREFIXES,
    TEXT_LIMIT,
    TITLE_LIMIT,
    USER_PROPERTY_LIMIT,
    Rule,
)

NEVER_HEADERS = ("Cookie", "X-Forwarded-*", "Referer", "Origin", "Accept-Language", "sec-ch-*")


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


# ---------------------------------------------------------------------------------------------
# What leaves


def _form(name: str, rule: Rule, f: Facts) -> tuple[str, str]:
    """Plain words for what ``rule`` sends, and how its values are checked."""
    kind = rule.name
    scanned = f"personal values replaced by tokens ({detectors_phrase(f)})"
    if name == "v" and kind != "override":
        return "always `2`: a beacon of any other protocol version is dropped", "fixed"
    if name == "tid" and kind != "override":
        return (f"one of {code(f.config.measurement_ids)}: a beacon for any other measurement "
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
            f"{rotation(f)}, cut to {f.bits} bits, sent as `<number>.<window start>`",
            "replaced",
        )
    if kind == "url" and name == "dl":
        return (
            "scheme, host and path; path segments that look like identifiers become markers "
            f"(`:id`, `:email`, …); fragment dropped; {query_phrase(f.page_query)}",
            "scanned",
        )
    if kind == "url":
        return (
            "the path, identifier-like segments replaced by markers; "
            + query_phrase(f.path_query),
            "scanned",
        )
    if kind == "hostname":
        return "the host name, lower-cased, while it has a host name's shape", "shape"
    if kind == "referrer":
        return f"{internal_referrer(f)}; {_external_referrer(f)}", "scanned"
    if kind == "pii":
        family = family_of(name)
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
            f"rounded to one of {len(SCREENS)} common screen sizes (by its long side, "
            "orientation kept)",
            "fixed",
        )
    if kind == "client_hint":
        if name in CLOSED_SETS:
            return f"only {closed_set(name)}", "fixed"
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


def _external_referrer(f: Facts) -> str:
    out = f.external_ref
    if out is None:
        return "from any other site: dropped"
    if out == f"{EXTERNAL}/":
        return "from any other site: its origin only (`https://host/`)"
    return f"from any other site: forwarded (`{f.external_probe}` is sent as `{out}`)"


_SPLIT_RULES = frozenset({"url", "client_hint", "referrer", "hostname", "pseudonym"})


def forwarded_fields(f: Facts) -> tuple[Field, ...]:
    groups: dict[tuple[str, str, str, str], list[str]] = {}
    rules: dict[tuple[str, str, str, str], Rule] = {}
    # The pinned ones first: what identifies the protocol and the property.
    for name, rule in sorted(f.forwarded.items(), key=lambda item: item[0] not in PINNED):
        key = (
            rule.name,
            treatment_of(rule) or "",
            family_of(name),
            name if rule.name in _SPLIT_RULES or name in PINNED else str(rule.action),
        )
        groups.setdefault(key, []).append(name)
        rules[key] = rule
    fields = []
    for key, names in groups.items():
        form, values = _form(names[0], rules[key], f)
        fields.append(Field(label_of(names), tuple(names), key[1], key[0], form, values))
    for name, value in f.policy.forced.items():
        what = "no ad personalisation" if name == "npa" else "set by the proxy"
        fields.append(Field(name, (name,), "forced", "proxy_set", f"always `{value}`: {what}",
                            "fixed"))
    location = location_form(f.config)
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


def location_form(config: Config) -> str | None:
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


def header_fields() -> tuple[Field, ...]:
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


def never_forwarded(f: Facts) -> tuple[NeverItem, ...]:
    policy, loc = f.policy, f.config.privacy.location
    headers = {h.lower() for h in _outbound_headers()}
    uip_dropped = treatment_of(policy.rule("_uip")) is None
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
                  f"outbound requests carry only {code(_outbound_headers())}"),
    ]
    uid = policy.rule("uid")
    items.append(NeverItem(
        "`uid` in clear", "parameter", treatment_of(uid) is None,
        "dropped" if treatment_of(uid) is None else f"forwarded ({uid.name})",
        params=("uid",) if treatment_of(uid) is None else (),
    ))
    cid = policy.rule("cid")
    cid_ok = cid.name == "pseudonym" or treatment_of(cid) is None
    items.append(NeverItem(
        "The original `cid`", "value", cid_ok,
        "replaced by the rotating pseudonym" if cid.name == "pseudonym"
        else "dropped" if cid_ok else f"forwarded ({cid.name}: {treatment_of(cid)})",
    ))
    scanned = [n for n, r in f.forwarded.items() if _form(n, r, f)[1] == "scanned"]
    for kind, (label, _) in VALUE_CANARIES.items():
        passes = f.passes[kind]
        why = f"scanned in every text field ({code(_short_list(scanned))})"
        if passes:
            why += (
                f"; not guaranteed in {code(passes)}: these are forwarded by shape only "
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
        n for n, present in (("_uip", location_form(f.config) is not None),
                             ("tt", bool(f.config.internal_traffic.networks))) if present
    }
    groups: dict[tuple[str, str], list[str]] = {}
    for name, rule in f.dropped.items():
        groups.setdefault((rule.name, family_of(name)), []).append(name)
    for (rule_name, _), names in groups.items():
        why = _DROP_WHY.get(rule_name, f"dropped by the rule `{rule_name}`")
        replaced = [n for n in names if n in own]
        never = [n for n in names if n not in own]
        if replaced:
            why += (f"; {code(replaced)} sent by the browser is dropped too, and the proxy "
                    "sends its own (see What leaves)")
        if never:
            items.append(NeverItem(code([label_of(never)]), "parameter", True, why,
                                   params=tuple(never)))
    sst = treatment_of(policy.rule(f"{IDENTIFIER_PREFIXES[0]}x")) is None
    items.append(NeverItem(code(p + "*" for p in IDENTIFIER_PREFIXES), "family", sst,
                           "server-side tagging data", prefixes=IDENTIFIER_PREFIXES))
    for prefixes, setting in ((ALLOW_LIST_PREFIXES[:2], "event_params"),
                              (ALLOW_LIST_PREFIXES[2:], "user_properties")):
        allowed = tuple(n for n in f.forwarded if n.startswith(prefixes))
        if setting == "user_properties" and f.policy.profile != "balanced":
            why = "not forwarded in the strict profile"
        else:
            why = f"except the names on `privacy.{setting}`"
        if allowed:
            why += f"; forwarded: {code(allowed)}"
        items.append(NeverItem(code(p + "*" for p in prefixes), "family", True, why,
                               prefixes=prefixes, allowed=allowed))
    items.append(NeverItem("Any other parameter", "unknown", True,
                           "a parameter the policy table does not list is dropped"))
    return tuple(items)


def _short_list(names: Sequence[str], limit: int = 8) -> list[str]:
    names = [label_of([n]) for n in names]
    items = [n for n in names if ITEM.match(n)]
    rest = [n for n in names if not ITEM.match(n)]
    out = rest[:limit] + ([f"{items[0]}…{items[-1]}"] if items else [])
    return out + (["…"] if len(rest) > limit else [])
