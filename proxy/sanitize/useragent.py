"""The User-Agent header rebuilt from browser family, major version and OS family only.

Chrome's "User-Agent reduction" froze the platform part of its UA (``Windows NT 10.0; Win64;
x64``, ``Linux; Android 10; K``) and zeroed minor versions, so the string stopped telling sites
the OS version, CPU and device model. This module applies the same idea to every browser: the
visitor's UA is parsed with ``ua_parser`` (uap-core's regexes, the same family of parser
Google's reports are built on), and a canonical UA is written from a template for that browser
family with the OS's frozen platform token and ``<major>.0.0.0``. Re-parsing the canonical UA
gives the same browser family, major version and OS family (tests check this on real UAs);
everything rarer (OS version, device model, build ids, in-app tokens, locale) is gone.

Families without a template, and OSes without a frozen token, get a generic string that keeps
nothing rare. The generaliser also flags bots, which the proxy drops; headless Chromium among
them unless ``allow_headless`` (a site's own end-to-end tests), when it counts as Chrome.

Parsing costs tens of microseconds, so results are cached in a bounded in-memory dict keyed by
the raw UA. A UA string is not personal by itself but can be rare; the cache is never exported
or logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from ua_parser import BestAvailableResolver, Parser, load_lazy_builtins

__all__ = ["GENERIC", "GeneralisedAgent", "UserAgentGeneraliser"]

# Frozen platform tokens per uap OS family. The OS version inside them is fixed, never the
# visitor's (iOS 17_0 for every iPhone, Android 10 for every Android, as Chrome does).
_PLATFORMS = {
    "Windows": "Windows NT 10.0; Win64; x64",
    "Mac OS X": "Macintosh; Intel Mac OS X 10_15_7",
    "Linux": "X11; Linux x86_64",
    "Chrome OS": "X11; CrOS x86_64 14541.0.0",
    "Android": "Linux; Android 10; K",
    "iOS": "iPhone; CPU iPhone OS 17_0 like Mac OS X",
}
# Distributions are a rarer configuration than "Linux", which is what reports show anyway.
_OS_ALIASES = {
    "Ubuntu": "Linux", "Fedora": "Linux", "Debian": "Linux", "Linux Mint": "Linux",
    "Arch Linux": "Linux", "Gentoo": "Linux", "Red Hat": "Linux", "SUSE": "Linux",
    "openSUSE": "Linux", "CentOS": "Linux", "Mandriva": "Linux", "Slackware": "Linux",
    "Kubuntu": "Linux", "Xubuntu": "Linux", "Lubuntu": "Linux",
}

_CHROMIUM = "Mozilla/5.0 ({platform}) AppleWebKit/537.36 (KHTML, like Gecko)"
_WEBKIT_IOS = "Mozilla/5.0 ({platform}) AppleWebKit/605.1.15 (KHTML, like Gecko)"
_DESKTOP = frozenset({"Windows", "Mac OS X", "Linux", "Chrome OS"})
_ANDROID = frozenset({"Android"})
_IOS = frozenset({"iOS"})


@dataclass(frozen=True, slots=True)
class _Template:
    ua: str  # placeholders: {platform}, {major}, {engine}
    oses: frozenset[str]
    # Chromium-based browsers also carry "Chrome/<engine>". Its major is a function of the
    # browser's own major so the rebuilt UA depends on nothing else: equal to it (Edge), a
    # fixed offset that has held for years (Opera desktop = Chromium - 14), or else frozen.
    engine_offset: int | None = 0


_FROZEN_ENGINE = "120"

_TEMPLATES: dict[str, _Template] = {
    # Chrome without "Mobile" on Android is Chrome on a tablet: the family says so already.
    "Chrome": _Template(_CHROMIUM + " Chrome/{major}.0.0.0 Safari/537.36",
                        _DESKTOP | _ANDROID),
    "Chrome Mobile": _Template(_CHROMIUM + " Chrome/{major}.0.0.0 Mobile Safari/537.36",
                               _ANDROID),
    "Chrome Mobile WebView": _Template(
        "Mozilla/5.0 (Linux; Android 10; K; wv) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Version/4.0 Chrome/{major}.0.0.0 Mobile Safari/537.36", _ANDROID),
    "Chrome Mobile iOS": _Template(
        _WEBKIT_IOS + " CriOS/{major}.0.0.0 Mobile/15E148 Safari/604.1", _IOS),
    "Chromium": _Template(_CHROMIUM + " Chromium/{major}.0.0.0 Chrome/{major}.0.0.0"
                          " Safari/537.36", _DESKTOP),
    "Firefox": _Template("Mozilla/5.0 ({platform}; rv:{major}.0) Gecko/20100101"
                         " Firefox/{major}.0", _DESKTOP),
    "Firefox Mobile": _Template("Mozilla/5.0 (Android 10; Mobile; rv:{major}.0)"
                                " Gecko/{major}.0 Firefox/{major}.0", _ANDROID),
    "Firefox iOS": _Template(
        _WEBKIT_IOS + " FxiOS/{major}.0 Mobile/15E148 Safari/605.1.15", _IOS),
    "Safari": _Template(
        "Mozilla/5.0 ({platform}) AppleWebKit/605.1.15 (KHTML, like Gecko)"
        " Version/{major}.0 Safari/605.1.15", frozenset({"Mac OS X"})),
    "Mobile Safari": _Template(
        _WEBKIT_IOS + " Version/{major}.0 Mobile/15E148 Safari/604.1", _IOS),
    # In-app browsers on iOS (WKWebView without a browser token): no version to keep.
    "Mobile Safari UI/WKWebView": _Template(_WEBKIT_IOS + " Mobile/15E148", _IOS),
    "Edge": _Template(_CHROMIUM + " Chrome/{engine}.0.0.0 Safari/537.36 Edg/{major}.0.0.0",
                      _DESKTOP),
    "Edge Mobile": _Template(
        _CHROMIUM + " Chrome/{engine}.0.0.0 Mobile Safari/537.36 EdgA/{major}.0.0.0",
        _ANDROID),
    "Opera": _Template(_CHROMIUM + " Chrome/{engine}.0.0.0 Safari/537.36 OPR/{major}.0.0.0",
                       _DESKTOP, engine_offset=14),
    "Opera Mobile": _Template(
        _CHROMIUM + " Chrome/{engine}.0.0.0 Mobile Safari/537.36 OPR/{major}.0.0.0",
        _ANDROID, engine_offset=None),
    "Samsung Internet": _Template(
        _CHROMIUM + " SamsungBrowser/{major}.0 Chrome/{engine}.0.0.0 Mobile Safari/537.36",
        _ANDROID, engine_offset=None),
    "Yandex Browser": _Template(
        _CHROMIUM + " Chrome/{engine}.0.0.0 YaBrowser/{major}.0.0.0 Safari/537.36",
        _DESKTOP, engine_offset=None),
    # The Google app on iOS is one of the most common in-app browsers.
    "Google": _Template(_WEBKIT_IOS + " GSA/{major}.0.0 Mobile/15E148 Safari/604.1", _IOS),
}
# Edge on iOS has its own token but the same uap family as Edge on Android.
_EDGE_IOS = _Template(
    _WEBKIT_IOS + " Version/17.0 EdgiOS/{major}.0.0.0 Mobile/15E148 Safari/605.1.15", _IOS)

GENERIC = "Mozilla/5.0 (compatible)"
_OTHER = "Other"
# Unknown browser on iOS: every iOS browser is WebKit, and this is what an in-app one sends.
_OS_ONLY_FAMILY = {"iOS": "Mobile Safari UI/WKWebView"}

# Automation that uap-core does not classify as "Spider": headless browsers, audit tools,
# HTTP libraries. Word-bounded "bot" so that device models like "CUBOT X30" do not count.
_BOT_MARKERS = re.compile(
    r"headless|lighthouse|phantomjs|selenium|webdriver|puppeteer|playwright|"
    r"python|curl/|wget|go-http-client|okhttp|axios/|node-fetch|libwww|java/|scrapy|"
    r"httpclient|\bbot\b|crawler|spider",
    re.IGNORECASE,
)
_SPIDER = "Spider"
# Headless Chromium's UA is Chrome's with this product token instead of "Chrome/".
_HEADLESS_CHROME = "HeadlessChrome/"
_MAX_PARSED = 1024  # real UAs are under 500 characters; the rest cannot change the result


@dataclass(frozen=True, slots=True)
class GeneralisedAgent:
    """What is forwarded: the canonical UA, and the browser family, major version and OS
    family it carries (``"Other"``/``""`` when generic). ``is_bot``: drop the beacon."""

    user_agent: str
    browser: str
    major: str
    os: str
    is_bot: bool


_EMPTY = GeneralisedAgent(GENERIC, _OTHER, "", _OTHER, False)


@cache
def _shared_parser() -> Parser:
    """uap-core's matchers, built once per process: they take about 24 MiB, and the public
    pipeline, Measurement Protocol ingest and ``explain`` each hold a generaliser."""
    return Parser(BestAvailableResolver(load_lazy_builtins()))


class UserAgentGeneraliser:
    """Maps raw User-Agent strings to ``GeneralisedAgent``; its matchers are shared by every
    generaliser of the process, its cache is its own."""

    def __init__(self, cache_size: int = 4096, *, allow_headless: bool = False) -> None:
        """``cache_size``: how many distinct raw UAs to remember (0: no cache). Loads the
        uap-core matchers now, so the first beacon does not pay for it. ``allow_headless``:
        headless Chromium is Chrome, not a bot (other automation markers still are)."""
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self._cache_size = cache_size
        self._allow_headless = allow_headless
        self._cache: dict[str, GeneralisedAgent] = {}
        # No cache in the parser itself: ours holds the result, a second one would hold the
        # same rare strings twice.
        self._parser = _shared_parser()

    @property
    def cached(self) -> int:
        """How many raw UAs are cached now (never more than ``cache_size``)."""
        return len(self._cache)

    def generalise(self, ua: str | None) -> GeneralisedAgent:
        """The canonical agent for ``ua``; a generic one for an empty or unknown UA."""
        if not ua:
            return _EMPTY
        # Truncated first, so the cache holds at most cache_size x 1 KiB whatever is sent.
        ua = ua[:_MAX_PARSED]
        hit = self._cache.get(ua)
        if hit is not None:
            return hit
        agent = self._rebuild(ua)
        if self._cache_size:
            if len(self._cache) >= self._cache_size:
                # Oldest first (dicts keep insertion order): cheaper than LRU bookkeeping,
                # and the popular UAs come straight back.
                del self._cache[next(iter(self._cache))]
            self._cache[ua] = agent
        return agent

    def _rebuild(self, ua: str) -> GeneralisedAgent:
        if self._allow_headless:
            ua = ua.replace(_HEADLESS_CHROME, "Chrome/")
        result = self._parser.parse(ua)
        browser = result.user_agent
        os = result.os
        device = result.device
        is_bot = (device is not None and device.family == _SPIDER) or bool(
            _BOT_MARKERS.search(ua))
        os_family = os.family if os is not None else _OTHER
        os_family = _OS_ALIASES.get(os_family, os_family)
        platform = _PLATFORMS.get(os_family)
        if platform is None or is_bot:
            return GeneralisedAgent(GENERIC, _OTHER, "", _OTHER, is_bot)
        family = browser.family if browser is not None else _OTHER
        major = (browser.major or "") if browser is not None else ""
        template = _TEMPLATES.get(family)
        if family == "Edge Mobile" and os_family == "iOS":
            template = _EDGE_IOS
        if template is not None and os_family in template.oses:
            needs_major = "{major}" in template.ua
            if not needs_major:
                major = ""
            if not needs_major or (major.isascii() and major.isdigit() and len(major) <= 4):
                return GeneralisedAgent(_fill(template, platform, major), family, major,
                                        os_family, False)
        # A browser without a template (or an odd version): keep only the OS.
        fallback = _OS_ONLY_FAMILY.get(os_family)
        if fallback is not None:
            return GeneralisedAgent(_fill(_TEMPLATES[fallback], platform, ""), fallback, "",
                                    os_family, False)
        return GeneralisedAgent(f"Mozilla/5.0 ({platform})", _OTHER, "", os_family, False)


def _fill(template: _Template, platform: str, major: str) -> str:
    if template.engine_offset is None:
        engine = _FROZEN_ENGINE
    elif major:
        engine = str(int(major) + template.engine_offset)
    else:
        engine = ""
    return template.ua.format(platform=platform, major=major, engine=engine)
