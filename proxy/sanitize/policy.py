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
from proxy.sanitize.normalize import view
from proxy.sanitize.pii import DEFAULT_PHONE_REGIONS, PiiScrubber
from proxy.sanitize.urls import UrlScrubber

BALANCED_QUERY_KEYS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
MAX_ITEMS = 200
TEXT_LIMIT = 100  # GA's limit for a parameter value (ga4-collect.md §7)
TITLE_LIMIT = 300
USER_PROPERTY_LIMIT = 36

# Parameters kept as they are, each only while its value has the shape gtag gives it: a
# "flag" carrying an e-mail or an address is not a flag, and is dropped. The shapes are tight
# enough that no value of that shape is a phone, card or IBAN number by the scrubber's own
# definitions (proxy/sanitize/pii.py): digit runs too short for a card (13+ digits starting
# 2-6), no trunk-0 runs a phone could be, no separators between digits, no IBAN's letters.
SHAPES: dict[str, str] = {
    # flags and small counters
    **dict.fromkeys("_ee _c _ss _nsi seg ir frm are pae _fv gcu gcut dma rcb".split(), r"\d{1,3}"),
    # hit sequence, engagement and timing milliseconds
    # (eight digits: 27 hours of engagement; a ninth would make room for an identity number)
    **dict.fromkeys("_s _et tfd".split(), r"\d{1,8}"),
    # Page-load id: a random number below 2^31, or epoch milliseconds. Ten digits are kept
    # only with a leading 1: "2125550199" is a North American phone number, so the random
    # values from 2,000,000,000 up (7 % of them) are dropped with it.
    "_p": r"0|[1-9]\d{0,8}|1\d{9}|1\d{12}",
    "sid": r"[1-9]\d{0,8}|1\d{9}",  # session start, epoch seconds (a leading 1 until 2033)
    "v": r"\d{1,2}",
    # Tag build: one or two digits, then letters and digits, as "45je4730v877985709z88933":
    # every digit run is glued to letters, where no detector's number can stand.
    "gtm": r"(?=.*[A-Za-z])(?!.*\d{13})\d{1,2}[A-Za-z][A-Za-z0-9]{0,62}",
    # Experiment ids: nine digits each, as gtag sends them (a card split in short runs, no).
    "tag_exp": r"0|[1-9]\d{8}(?:~[1-9]\d{8})*",
    "gcd": r"\d{1,2}(?:[A-Za-z]\d?){0,24}",  # consent defaults, as "13l3l3l3l1l1"
    "gcs": r"G1[01-]{2}",
    "cu": r"[A-Za-z]{3}",
    # language-script-region: letters, or a three-digit UN region ("es-419")
    "ul": r"[A-Za-z]{2,3}(?:-(?:[A-Za-z]{2,8}|\d{3})){0,3}",
    "tid": r"G-[A-Z0-9]{4,20}",
}
# Short gtag-internal tokens whose values are not documented: the shape, and then nothing
# the personal-data scrubber finds (cheap on what gtag sends: letters, no long digit runs).
SCANNED_TOKENS = dict.fromkeys(
    "_eu _tu _z gaf dma_cps pscdl".split(), r"(?!.*\d{7})[A-Za-z0-9_~.-]{0,160}"
)
CONSENT_FLAGS = frozenset("gcs gcd gcu gcut dma dma_cps pscdl".split())
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
BALANCED_CLIENT_HINTS = {"uamb": r"[01]", "uap": r"[A-Za-z][A-Za-z ]{0,31}"}
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
# Coarse screen classes by the long side: a rare resolution reports as a common one.
SCREEN_CLASSES = (
    (700, (640, 360)),
    (950, (896, 414)),
    (1100, (1024, 768)),
    (1300, (1280, 720)),
    (1450, (1366, 768)),
    (1700, (1536, 864)),
    (2200, (1920, 1080)),
    (3000, (2560, 1440)),
)
LARGEST_SCREEN = (3840, 2160)

# GA's event-name shape; never a run of seven digits (a phone or identity number), an IBAN
# after an underscore, or an address written with underscores ("x_jane_doe_example_org").
_EVENT_NAME = re.compile(
    r"^(?!.*\d{7})(?!.*(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}[A-Za-z0-9]{11})"
    r"(?!.*_[A-Za-z0-9-]+_(?:com|org|net|edu|gov|io|co|uk|de|fr|es|it|nl|eu|info|me|biz)$)"
    r"[A-Za-z][A-Za-z0-9_]{0,39}$"
)
# No leading zero (a phone's trunk prefix), at most eight digits in all: 99,999,999, or
# 999,999.99 with cents. A ninth would make room for a phone or identity number.
_NUMBER = re.compile(r"^-?(?!(?:\D*\d){9})(?:0|[1-9]\d*)(\.\d{1,6})?$")
_SCREEN = re.compile(r"^(\d{2,5})x(\d{2,5})$")
# A value that is a URL, one inside free text, and a path (no space: "/ month" is text).
_ABSOLUTE_URL = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://\S*\s*$")
_EMBEDDED_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s<>\"'`]+")
_PATH_VALUE = re.compile(r"/\S*$")
# A host name, never an IPv4 address: a page served at an address would forward one. Nor a
# numeric last label: no top-level domain is a number, so that is an address too.
_HOSTNAME = re.compile(
    r"^(?!.*\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})(?!(?:.*\.)?\d+\.?$)[a-z0-9.-]{1,253}$"
)


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
    # The serving path's shortcuts (the sanitiser's flat table), each giving what ``fn``
    # gives. ``plain``: a shape check on the raw value that passes only values ``fn`` keeps
    # as they are and whose characters need no encoding, so they go out as they came.
    # ``memo``: ``fn`` depends on the value alone (1), or on it and the page's host (2), so
    # a value it left unchanged may be remembered as clean.
    plain: Callable[[str], object] | None = None
    memo: int = 0

    @property
    def drops(self) -> bool:
        return self.fn is None and self.action is Action.DROPPED


DROP_IDENTIFIER = Rule("identifier", Action.DROPPED)
DROP_UNKNOWN = Rule("unknown", Action.DROPPED)
# ep./epn./up./upn. names outside privacy.event_params / privacy.user_properties.
DROP_NOT_ALLOW_LISTED = Rule("not_allow_listed", Action.DROPPED)
ALLOW_LIST_PREFIXES = ("ep.", "epn.", "up.", "upn.")


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
        if name.startswith(ALLOW_LIST_PREFIXES):
            return DROP_NOT_ALLOW_LISTED
        return DROP_UNKNOWN


def _note(ctx: EventContext, detail: Iterable[str]) -> None:
    if ctx.notes is not None:
        ctx.notes.extend(detail)


def _scrub_text(pii: PiiScrubber, limit: int, urls: UrlScrubber | None = None) -> RuleFn:
    # The whole value is scanned, and cut to the limit only afterwards. With ``urls``, a
    # value that is a URL, or holds one, gets the page URL's treatment first (query and
    # fragment removed, identifiers in the path replaced), whatever its parameter's name.
    def scrub(value: str, ctx: EventContext) -> str | None:
        if urls is not None and ("://" in value or value[:1] == "/" or "%" in value):
            url_safe = _urls_in_text(urls, value, ctx)
            if url_safe is None:
                return None
            value = url_safe
        text, fired = pii.scrub_truncated(value, limit)
        if fired:
            _note(ctx, fired)
        return text

    return scrub


def _urls_in_text(urls: UrlScrubber, value: str, ctx: EventContext) -> str | None:
    seen = view(value)
    if "://" not in seen:
        if seen[:1] == "/" and _PATH_VALUE.match(seen):
            path, fired = urls.path(seen)  # file_name, a page path: a path's treatment
            _note(ctx, fired)
            return path
        return value
    if _ABSOLUTE_URL.match(seen):
        url, fired = urls.page(seen.strip())
        _note(ctx, fired)
        return url  # None (dropped) for an unparseable URL or an address as its host

    def replace(match: re.Match[str]) -> str:
        url, fired = urls.page(match.group())
        _note(ctx, fired)
        return url or "[url]"

    return _EMBEDDED_URL.sub(replace, seen)


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


def _hostname(pii: PiiScrubber) -> RuleFn:
    def hostname(value: str, ctx: EventContext) -> str | None:
        host = value.strip().lower()
        return host if _HOSTNAME.match(host) and not pii.scrub(host)[1] else None

    return hostname


def _shaped_and_scanned(pattern: str, pii: PiiScrubber) -> RuleFn:
    shape = _shaped(pattern)

    def scanned(value: str, ctx: EventContext) -> str | None:
        kept = shape(value, ctx)
        return None if kept is None or pii.scrub(kept)[1] else kept

    return scanned


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
    long_side = max(width, height)
    a, b = next((cls for bound, cls in SCREEN_CLASSES if long_side <= bound), LARGEST_SCREEN)
    return f"{a}x{b}" if width >= height else f"{b}x{a}"


def _shape_source(pattern: str) -> str:
    # The shape, and (for dotted shapes) no IPv4 address inside.
    guard = r"(?!.*\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})" if "." in pattern else ""
    return guard + pattern


def _shaped(pattern: str) -> RuleFn:
    # One C-level match per value.
    match = re.compile(_shape_source(pattern), re.DOTALL | re.ASCII).fullmatch

    def shaped(value: str, ctx: EventContext) -> str | None:
        return value if match(value) else None

    return shaped


def _plain_shape(pattern: str) -> Callable[[str], object]:
    """The shape of ``_shaped(pattern)`` and, in the same match, only characters that
    encodeURIComponent leaves alone: a value it passes is kept raw and sent as it is."""
    return re.compile(
        r"(?=[A-Za-z0-9._~!*()'-]*\Z)" + _shape_source(pattern), re.DOTALL | re.ASCII
    ).fullmatch


def _shape_rule(name: str, pattern: str) -> Rule:
    return Rule(name, Action.DROPPED, _shaped(pattern), plain=_plain_shape(pattern))


def _item(pii: PiiScrubber) -> RuleFn:
    def item(value: str, ctx: EventContext) -> str | None:
        tokens, values = [], []
        for token in value.split("~"):
            key = token[:2]
            if key not in ITEM_KEYS:
                _note(ctx, ("item_custom",))
                continue
            # The whole token is scanned, then cut: a cut first would keep half an address.
            text, fired = pii.scrub_truncated(token[2:], TEXT_LIMIT)
            if fired:
                _note(ctx, fired)
                # A scrubbed token has a "~" of its own only if the view decoded one.
                text = text.replace("~", " ")
            tokens.append(key + text)
            values.append(text)
        # Personal data can also be split across fields ("~c2zelda.quux~c3@example.org"):
        # the values read together, a space between each, must be clean too, or the item
        # is dropped whole.
        if len(values) > 1 and pii.contains_pii(" ".join(values)):
            _note(ctx, ("item_split",))
            return None
        return "~".join(tokens) or None

    return item


def compile_policy(
    privacy: Privacy, allowed_origins: Iterable[str] = (), pii: PiiScrubber | None = None
) -> Policy:
    """Build the table for ``privacy.profile`` with the site's allow-lists and overrides."""
    balanced = privacy.profile == "balanced"
    regions = tuple(
        DEFAULT_PHONE_REGIONS if privacy.phone_regions is None else privacy.phone_regions
    )
    if pii is None:
        if privacy.pii_detectors is None:
            pii = PiiScrubber(phone_regions=regions)
        else:
            pii = PiiScrubber(privacy.pii_detectors, phone_regions=regions)
    query_keys = list(privacy.url_query_allowlist)
    if balanced:
        query_keys = [*BALANCED_QUERY_KEYS, *query_keys]
    urls = UrlScrubber(query_keys, pii)
    internal = frozenset(filter(None, (UrlScrubber.host(o + "/") for o in allowed_origins)))

    text = Rule("pii", Action.SCRUBBED, _scrub_text(pii, TEXT_LIMIT), memo=1)
    # Event parameters may carry URLs (link_url, page_location, file_name, ...): those get
    # the page URL's treatment, whatever the allow-list says.
    event_text = Rule("pii", Action.SCRUBBED, _scrub_text(pii, TEXT_LIMIT, urls), memo=1)
    table: dict[str, Rule] = {}
    # The never-forwarded guarantee holds whatever detectors a site chose for its own text.
    full = PiiScrubber(phone_regions=regions)
    for name, pattern in SHAPES.items():
        kind = "consent_flag" if name in CONSENT_FLAGS else "technical"
        table[name] = _shape_rule(kind, pattern)
    for name, pattern in SCANNED_TOKENS.items():
        kind = "consent_flag" if name in CONSENT_FLAGS else "technical"
        table[name] = Rule(kind, Action.DROPPED, _shaped_and_scanned(pattern, full), memo=1)
    table.update(dict.fromkeys(IDENTIFIERS, DROP_IDENTIFIER))
    table["en"] = Rule("event_name", Action.DROPPED, _event_name, memo=1)
    table["cid"] = Rule("pseudonym", Action.REPLACED, _pseudonym)
    # Set by the proxy on the query only (Policy.forced, location, internal traffic).
    table["npa"] = table["tt"] = Rule("proxy_set", Action.DROPPED)
    table["_dbg"] = (
        _shape_rule("debug", "1") if privacy.forward_debug else Rule("debug", Action.DROPPED)
    )
    table["dl"] = Rule("url", Action.GENERALISED, _page_url(urls), memo=1)
    table["dp"] = Rule("url", Action.GENERALISED, _page_path(urls), memo=1)
    table["dh"] = Rule("hostname", Action.DROPPED, _hostname(full), memo=1)
    table["dr"] = Rule("referrer", Action.GENERALISED, _referrer(urls, internal, balanced), memo=2)
    table["dt"] = Rule("pii", Action.SCRUBBED, _scrub_text(pii, TITLE_LIMIT, urls), memo=1)
    table["sct"] = (
        _shape_rule("session_count", r"\d{1,6}")
        if balanced
        else Rule("session_count", Action.DROPPED)
    )
    table["sr"] = (
        Rule("screen_class", Action.GENERALISED, _screen_class)
        if balanced
        else Rule("fingerprint", Action.DROPPED)
    )
    for hint in CLIENT_HINTS:
        shape = BALANCED_CLIENT_HINTS.get(hint) if balanced else None
        table[hint] = (
            _shape_rule("client_hint", shape) if shape else Rule("client_hint", Action.DROPPED)
        )
    for name in CAMPAIGN:
        table[name] = text if balanced else Rule("campaign", Action.DROPPED)
    item = Rule("item", Action.SCRUBBED, _item(pii), memo=1)
    table.update({f"pr{i}": item for i in range(1, MAX_ITEMS + 1)})
    number = Rule("number", Action.DROPPED, _number, memo=1)
    for name in privacy.event_params:
        table[f"ep.{name}"] = event_text
        table[f"epn.{name}"] = number
    if balanced:
        user_text = Rule("pii", Action.SCRUBBED, _scrub_text(pii, USER_PROPERTY_LIMIT, urls),
                         memo=1)
        for name in privacy.user_properties:
            table[f"up.{name}"] = user_text
            table[f"upn.{name}"] = number
    overrides = {
        "keep": Rule("override", Action.KEPT),
        "drop": Rule("override", Action.DROPPED),
        "scrub": Rule("override", Action.SCRUBBED, text.fn, memo=1),
    }
    for name, action in privacy.overrides.items():
        if name in ("cid", "uid", "_uip", "npa", "tt") and action != "drop":
            # The never-forwarded list of §2 is not a per-site choice; "scrub" would forward
            # the original identifier (text scrubbing finds no personal data in an id).
            done = {"keep": "kept", "scrub": "scrubbed"}[action]
            raise ConfigError(f"privacy.overrides.{name}: cannot be {done}")
        table[name] = overrides[action]
    return Policy(privacy.profile, table, forced={"npa": "1"})
