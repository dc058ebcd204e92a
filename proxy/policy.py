"""The privacy policy compiled into a per-parameter table (privacy-requirements.md §2).

``compile_policy`` turns the profile, allow-lists and overrides into one dict from parameter
name to ``Rule``; the request path does one lookup per parameter and never reads
configuration. A parameter absent from the table is unknown, and unknown is dropped.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from proxy.config import ConfigError, Privacy
from proxy.sanitize.pii import PiiScrubber
from proxy.sanitize.urls import UrlScrubber

BALANCED_QUERY_KEYS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
MAX_ITEMS = 200
TEXT_LIMIT = 100  # GA's limit for a parameter value (ga4-collect.md §7)
TITLE_LIMIT = 300
USER_PROPERTY_LIMIT = 36

TECHNICAL = [
    "v",
    "tid",
    "gtm",
    "_p",
    "_s",
    "en",
    "_et",
    "_ee",
    "_c",
    "_ss",
    "_nsi",
    "seg",
    "cu",
    "ir",
    "tfd",
    "frm",
    "are",
    "pae",
    "_eu",
    "_tu",
    "_z",
    "tag_exp",
    "rcb",
    "gaf",
    "sid",
    "_fv",
    "ul",
]
CONSENT_FLAGS = ["gcs", "gcd", "gcu", "gcut", "dma", "dma_cps", "pscdl"]
IDENTIFIERS = [
    "uid",
    "_fid",
    "ecid",
    "em",
    "emd",
    "ecsid",
    "ec_mode",
    "_gaz",
    "gdid",
    "_fplc",
    "_uip",
    "ur",
    "_uc",
    "richsstsse",
    "us_privacy",
    "gdpr",
    "gdpr_consent",
    "tcfd",
]
IDENTIFIER_PREFIXES = ("sst.",)
CLIENT_HINTS = ["uaa", "uab", "uafvl", "uamb", "uam", "uap", "uapv", "uaw"]
BALANCED_CLIENT_HINTS = ("uamb", "uap")
CAMPAIGN = ["cm", "cs", "cn", "cc", "ck", "ci", "ccf", "cmt"]
ITEM_KEYS = frozenset(
    [
        "id",
        "nm",
        "br",
        "ca",
        "c2",
        "c3",
        "c4",
        "c5",
        "va",
        "pr",
        "qt",
        "cp",
        "ds",
        "ln",
        "li",
        "lp",
        "af",
        "lo",
        "cn",
        "cs",
        "pi",
        "pn",
    ]
)
# Coarse screen classes: a rare resolution is reported as the nearest common one.
SCREEN_CLASSES = (
    (360, 640),
    (414, 896),
    (768, 1024),
    (1280, 720),
    (1366, 768),
    (1536, 864),
    (1920, 1080),
    (2560, 1440),
    (3840, 2160),
)

_EVENT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,39}$")
_NUMBER = re.compile(r"^-?\d{1,15}(\.\d{1,6})?$")
_SCREEN = re.compile(r"^(\d{2,5})x(\d{2,5})$")
_HOSTNAME = re.compile(r"^[a-z0-9.-]{1,253}$")


class Action(enum.Enum):
    """What a rule did to one parameter (the audit and ``explain`` vocabulary)."""

    KEPT = "kept"
    DROPPED = "dropped"
    REPLACED = "replaced"
    SCRUBBED = "scrubbed"
    GENERALISED = "generalised"
    FORCED = "forced"


@dataclass(slots=True)
class EventContext:
    """Per-event facts a rule may read. ``notes`` collects rule details when tracing."""

    page_host: str | None
    pseudonymize: Callable[[str], str]
    notes: list[str] | None = None


RuleFn = Callable[[str, EventContext], "str | None"]


@dataclass(frozen=True, slots=True)
class Rule:
    """One parameter's treatment: ``fn`` returns the new value, or None to drop it."""

    name: str
    action: Action  # what the rule does when the value changes
    fn: RuleFn | None = None  # None with KEPT: keep as is; None with DROPPED: drop

    @property
    def drops(self) -> bool:
        return self.fn is None and self.action is Action.DROPPED


KEEP = Rule("technical", Action.KEPT)
DROP_IDENTIFIER = Rule("identifier", Action.DROPPED)
DROP_UNKNOWN = Rule("unknown", Action.DROPPED)


@dataclass(frozen=True)
class Policy:
    """The compiled table plus request-level facts of the profile."""

    profile: str
    table: dict[str, Rule]
    forced: dict[str, str] = field(default_factory=dict)  # set on the query of every beacon

    def rule(self, name: str) -> Rule:
        rule = self.table.get(name)
        if rule is not None:
            return rule
        if name.startswith(IDENTIFIER_PREFIXES):
            return DROP_IDENTIFIER
        return DROP_UNKNOWN


def _note(ctx: EventContext, detail: Iterable[str]) -> None:
    if ctx.notes is not None:
        ctx.notes.extend(detail)


def _scrub_text(pii: PiiScrubber, limit: int) -> RuleFn:
    def scrub(value: str, ctx: EventContext) -> str | None:
        text, fired = pii.scrub(value[: limit * 2])
        if fired:
            _note(ctx, fired)
        return text[:limit]

    return scrub


def _page_url(urls: UrlScrubber) -> RuleFn:
    def page(value: str, ctx: EventContext) -> str | None:
        url, fired = urls.page(value)
        _note(ctx, fired)
        return url

    return page


def _page_path(urls: UrlScrubber) -> RuleFn:
    def path(value: str, ctx: EventContext) -> str | None:
        out, fired = urls.path(value)
        _note(ctx, fired)
        return out

    return path


def _hostname(value: str, ctx: EventContext) -> str | None:
    host = value.strip().lower()
    return host if _HOSTNAME.match(host) else None


def _referrer(urls: UrlScrubber, internal_hosts: frozenset[str], keep_origin: bool) -> RuleFn:
    def referrer(value: str, ctx: EventContext) -> str | None:
        host = urls.host(value)
        if host is None:
            _note(ctx, ("unparseable",))
            return None
        if host == ctx.page_host or host in internal_hosts:
            url, fired = urls.page(value)
            _note(ctx, fired)
            return url
        _note(ctx, ("external_origin" if keep_origin else "external",))
        return urls.origin(value) if keep_origin else None

    return referrer


def _pseudonym(value: str, ctx: EventContext) -> str | None:
    return ctx.pseudonymize(value) if value else None


def _event_name(value: str, ctx: EventContext) -> str | None:
    return value if _EVENT_NAME.match(value) else None


def _number(value: str, ctx: EventContext) -> str | None:
    return value if _NUMBER.match(value) else None


def _screen_class(value: str, ctx: EventContext) -> str | None:
    match = _SCREEN.match(value)
    if not match:
        return None
    width, height = int(match.group(1)), int(match.group(2))
    landscape = width >= height
    long_side, short_side = max(width, height), min(width, height)

    def distance(cls: tuple[int, int]) -> int:
        return abs(max(cls) - long_side) + abs(min(cls) - short_side)

    best = min(SCREEN_CLASSES, key=distance)
    a, b = max(best), min(best)
    return f"{a}x{b}" if landscape else f"{b}x{a}"


def _item(pii: PiiScrubber) -> RuleFn:
    def item(value: str, ctx: EventContext) -> str | None:
        kept = []
        for token in value.split("~"):
            key = token[:2]
            if key in ITEM_KEYS:
                text, fired = pii.scrub(token[2 : 2 + TEXT_LIMIT])
                if fired:
                    _note(ctx, fired)
                kept.append(key + text)
            else:
                _note(ctx, ("item_custom",))
        return "~".join(kept) or None

    return item


def compile_policy(
    privacy: Privacy, allowed_origins: Iterable[str] = (), pii: PiiScrubber | None = None
) -> Policy:
    """Build the table for ``privacy.profile`` with the site's allow-lists and overrides."""
    balanced = privacy.profile == "balanced"
    pii = pii or PiiScrubber(*(() if privacy.pii_detectors is None else (privacy.pii_detectors,)))
    query_keys = list(privacy.url_query_allowlist)
    if balanced:
        query_keys = [*BALANCED_QUERY_KEYS, *query_keys]
    urls = UrlScrubber(query_keys, pii)
    internal = frozenset(filter(None, (UrlScrubber.host(o + "/") for o in allowed_origins)))

    text = Rule("pii", Action.SCRUBBED, _scrub_text(pii, TEXT_LIMIT))
    table: dict[str, Rule] = {}
    table.update(dict.fromkeys(TECHNICAL, KEEP))
    table.update(dict.fromkeys(CONSENT_FLAGS, Rule("consent_flag", Action.KEPT)))
    table.update(dict.fromkeys(IDENTIFIERS, DROP_IDENTIFIER))
    table["en"] = Rule("event_name", Action.DROPPED, _event_name)
    table["cid"] = Rule("pseudonym", Action.REPLACED, _pseudonym)
    # Set by the proxy on the query only (Policy.forced, location, internal traffic).
    table["npa"] = table["tt"] = Rule("proxy_set", Action.DROPPED)
    table["_dbg"] = KEEP if privacy.forward_debug else Rule("debug", Action.DROPPED)
    table["dl"] = Rule("url", Action.GENERALISED, _page_url(urls))
    table["dp"] = Rule("url", Action.GENERALISED, _page_path(urls))
    table["dh"] = Rule("hostname", Action.DROPPED, _hostname)
    table["dr"] = Rule("referrer", Action.GENERALISED, _referrer(urls, internal, balanced))
    table["dt"] = Rule("pii", Action.SCRUBBED, _scrub_text(pii, TITLE_LIMIT))
    table["sct"] = KEEP if balanced else Rule("session_count", Action.DROPPED)
    table["sr"] = (
        Rule("screen_class", Action.GENERALISED, _screen_class)
        if balanced
        else Rule("fingerprint", Action.DROPPED)
    )
    for hint in CLIENT_HINTS:
        keep = balanced and hint in BALANCED_CLIENT_HINTS
        table[hint] = KEEP if keep else Rule("client_hint", Action.DROPPED)
    for name in CAMPAIGN:
        table[name] = text if balanced else Rule("campaign", Action.DROPPED)
    item = Rule("item", Action.SCRUBBED, _item(pii))
    table.update({f"pr{i}": item for i in range(1, MAX_ITEMS + 1)})
    number = Rule("number", Action.DROPPED, _number)
    for name in privacy.event_params:
        table[f"ep.{name}"] = text
        table[f"epn.{name}"] = number
    if balanced:
        user_text = Rule("pii", Action.SCRUBBED, _scrub_text(pii, USER_PROPERTY_LIMIT))
        for name in privacy.user_properties:
            table[f"up.{name}"] = user_text
            table[f"upn.{name}"] = number
    overrides = {
        "keep": Rule("override", Action.KEPT),
        "drop": Rule("override", Action.DROPPED),
        "scrub": Rule("override", Action.SCRUBBED, text.fn),
    }
    for name, action in privacy.overrides.items():
        if name in ("cid", "uid", "_uip", "npa", "tt") and action == "keep":
            # The never-forwarded list of §2 is not a per-site choice.
            raise ConfigError(f"privacy.overrides.{name}: cannot be kept")
        table[name] = overrides[action]
    return Policy(privacy.profile, table, forced={"npa": "1"})
