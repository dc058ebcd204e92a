"""What the compiled policy does, found by reading and running its rules, and the phrases
that state it (privacy-requirements.md §1, §5).

Everything in the report is derived from the compiled configuration, never from prose: the
policy table of ``compile_policy`` is read rule by rule, and where a rule's effect depends on
its settings (which query keys survive, what an external referrer becomes, whether a card
number fits a shape-checked field) the compiled rule is *run* on fixed probe values, so the
report says what the code does, not what it was meant to do. The tests then check every claim
against the pipeline itself. Only configuration and synthetic probes are read here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import msgspec

from proxy.config import Config
from proxy.sanitize.pii import DEFAULT_DETECTORS
from proxy.sanitize.policy import (
    BALANCED_QUERY_KEYS,
    CAMPAIGN,
    IDENTIFIER_PREFIXES,
    IDENTIFIERS,
    LARGEST_SCREEN,
    SCREEN_CLASSES,
    SHAPES,
    Action,
    EventContext,
    Policy,
    Rule,
    compile_policy,
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
SCREENS = frozenset(
    f"{a}x{b}"
    for w, h in [*(cls for _, cls in SCREEN_CLASSES), LARGEST_SCREEN]
    for a, b in ((w, h), (h, w))
)
CLOSED_SETS: dict[str, frozenset[str]] = {
    "sr": SCREENS,
    "uamb": frozenset({"0", "1"}),
    "uaw": frozenset({"0", "1"}),
    "uab": frozenset({"32", "64"}),
}

# Checked by the pipeline before the policy runs (beacon.parse, Pipeline's tid check): a beacon
# with any other value is dropped whole, so these carry nothing but the configured values.
PINNED = ("v", "tid")

ITEM = re.compile(r"^pr\d+$")


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


def treatment_of(rule: Rule) -> str | None:
    """The §5 vocabulary for what a rule does to a value it forwards; None: never forwards."""
    if rule.fn is None:
        return Action.KEPT.value if rule.action is Action.KEPT else None
    # A validating rule (DROPPED when the value is invalid) forwards valid values as they are.
    return Action.KEPT.value if rule.action is Action.DROPPED else rule.action.value


def family_of(param: str) -> str:
    if ITEM.match(param):
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
class Facts:
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


def derive_facts(config: Config) -> Facts:
    privacy = config.privacy
    policy = compile_policy(privacy, config.allowed_origins)
    base = compile_policy(msgspec.structs.replace(privacy, overrides={}), config.allowed_origins)
    detectors = tuple(privacy.pii_detectors) if privacy.pii_detectors is not None else (
        DEFAULT_DETECTORS
    )
    forwarded = {n: r for n, r in policy.table.items() if treatment_of(r) is not None}
    dropped = {n: r for n, r in policy.table.items() if treatment_of(r) is None}

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
    identifiers_forwarded = tuple(n for n in identifiers if treatment_of(policy.rule(n)))

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
    return Facts(
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
    elif ITEM.match(name):
        values = [f"id{canary}", f"nm{canary}"]
    elif name in SHAPES:
        # Alone, and glued inside a tag-build token as gtag writes digit runs there.
        values = [canary, f"45je{canary}z8"]
    else:
        values = [canary]
    return any(canary in (apply_rule(rule, v) or "") for v in values)


# ---------------------------------------------------------------------------------------------
# The phrases that state them


def label_of(names: Sequence[str]) -> str:
    """Names as the report lists them: a run of items as ``pr1…pr200``."""
    if len(names) > 2 and all(ITEM.match(n) for n in names):
        return f"{names[0]}…{names[-1]}"
    return " ".join(names)


def code(names: Iterable[str]) -> str:
    """Names as one code span (backticks are the report's only markup)."""
    return "`" + " ".join(names) + "`"


def detectors_phrase(f: Facts) -> str:
    return ", ".join(f.detectors) if f.detectors else "none enabled"


def rotation(f: Facts) -> str:
    return f.config.privacy.pseudonym.rotation


def closed_set(name: str) -> str:
    return " or ".join(f"`{v}`" for v in sorted(CLOSED_SETS[name]))


def query_phrase(keys: Sequence[str]) -> str:
    if not keys:
        return "query dropped whole"
    return f"query: only {code(keys)} kept, values scanned; every other key dropped"


def internal_referrer(f: Facts) -> str:
    hosts = [urlsplit(o).hostname for o in f.config.allowed_origins]
    where = "the page's own host" + (f" or {code(h for h in hosts if h)}" if hosts else "")
    return f"from {where}: as `dl`, {query_phrase(f.internal_ref_query)}"
