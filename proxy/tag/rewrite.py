"""Rewrite Google's tag so that every host it would contact is the proxy.

gtag.js names the hosts it loads from and sends to in a few shapes: whole URLs
(``"https://www.google.com/ccm/collect"``), templated ones
(``"https://{ga4CollectionSubdomain.}google-analytics.com/g/collect"``), URLs concatenated
from a region prefix (``"https://"+(a?a+".":"")+"analytics.google.com/g/collect"``), and bare
host names it prefixes with ``"https://"`` itself (``cj(21,"www.googletagmanager.com")``).
Each shape is one rule below. A rule that finds nothing in a new build of the tag is a *miss*:
Google changed the file, so the rewrite may no longer catch everything. Misses are named,
logged and counted by the caller; the tag is still served, since whatever it then sends to
Google it would have sent without the proxy.

Host names the tag only compares against (the Tag Assistant referrer check, ``"google.com"``
in the audiences branch) are left alone: rewriting them changes the tag's logic, not where
it connects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

# Domains Google serves tags, collection and advertising from. A host is Google's when it is
# one of these or below one (``region1.google-analytics.com``, ``cct.google``); ``google.<cc>``
# stands for every country domain (google.co.uk, google.com.eg).
GOOGLE_DOMAINS = (
    "google-analytics.com",
    "googletagmanager.com",
    "googleadservices.com",
    "googlesyndication.com",
    "doubleclick.net",
    "gstatic.com",
    "googleapis.com",
    "google.<cc>",
    ".google",
    ".goog",
)
_GOOGLE_HOST = (
    r"(?:[a-z0-9-]+\.)*(?:"
    + "|".join(
        r"google\.[a-z]{2,3}(?:\.[a-z]{2})?" if d == "google.<cc>" else re.escape(d.lstrip("."))
        for d in GOOGLE_DOMAINS
    )
    + r")(?![\w.-])"
)

# Bare host names the tag turns into URLs by prefixing "https://". Comparison-only names
# (tagassistant.google.com, cct.google, google.com) are deliberately absent.
LOADED_HOSTS = ("www.googletagmanager.com", "www.google.com", "www.googleadservices.com")


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    pattern: re.Pattern[str]
    template: str  # {url}: the public origin; {netloc}: its host[:port]
    label: str = ""  # the host a templated match names (whole URLs and hosts name their own)


RULES = (
    # "https://{ga4CollectionSubdomain.}google-analytics.com/g/collect", and the same on
    # analytics.google.com (Google Signals).
    Rule(
        "templated_collection",
        re.compile(
            r"https://\{ga4CollectionSubdomain\.\}(?:analytics\.google|google-analytics)\.com"
        ),
        "{url}",
    ),
    # "https://"+(a?a+".":"")+"analytics.google.com/g/collect": a region prefix, then the host.
    Rule(
        "region_prefixed_host",
        re.compile(r'"https://"\+\(([\w$]+)\?\1\+"\.":""\)\+"analytics\.google\.com'),
        '"{url}',
        "<region>.analytics.google.com",
    ),
    # "https://"+a+".google-analytics.com/g/collect": a subdomain variable, then the host.
    Rule(
        "subdomain_prefixed_host",
        re.compile(r'"https://"\+[\w$]+\+"\.google-analytics\.com'),
        '"{url}',
        "<region>.google-analytics.com",
    ),
    # "https://www.%/ads/ga-audiences?…".replace("%", <google.cc domain>)
    Rule("audiences_template", re.compile(r"https://www\.%/ads/"), "{url}/ads/", "www.google.<cc>"),
    # "https://"+b.yo+".fls.doubleclick.net/activityi;": Floodlight's per-advertiser host.
    Rule(
        "floodlight_host",
        re.compile(r'"https://"\+[\w$.]+\+"\.fls\.doubleclick\.net/'),
        '"{url}/fls/',
        "<advertiser>.fls.doubleclick.net",
    ),
    # Every remaining whole URL on a Google host.
    Rule("google_urls", re.compile(r"https?://" + _GOOGLE_HOST), "{url}"),
    # cj(21,"www.googletagmanager.com") and the like, prefixed with "https://" at run time.
    Rule(
        "bare_hosts",
        re.compile('"(?:' + "|".join(re.escape(h) for h in LOADED_HOSTS) + ')"'),
        '"{netloc}"',
    ),
)

# What must be gone after the rules ran: a Google host at the start of a URL, or a Google
# domain glued onto a prefix at run time ("…"+".google-analytics.com/…").
_RESIDUE = re.compile(
    r"https?://" + _GOOGLE_HOST
    + r'|"\.(?:[a-z0-9-]+\.)*(?:google-analytics\.com|analytics\.google\.com|doubleclick\.net'
    r"|googletagmanager\.com|googleadservices\.com|googlesyndication\.com)"
)


@dataclass(frozen=True, slots=True)
class Rewritten:
    text: str
    hosts: tuple[str, ...]  # the Google hosts the tag named and now names the proxy for
    misses: tuple[str, ...]  # rules that found nothing, and "residue" if a host is left


def public_origin(public_url: str) -> tuple[str, str]:
    """``"https://stats.example.com/"`` -> (``"https://stats.example.com"``, its netloc)."""
    parts = urlsplit(public_url)
    return f"{parts.scheme}://{parts.netloc}", parts.netloc


def rewrite(script: str, public_url: str) -> Rewritten:
    """The tag with every Google host it would contact replaced by ``public_url``'s origin."""
    url, netloc = public_origin(public_url)
    hosts: set[str] = set()
    misses: list[str] = []
    text = script
    for rule in RULES:
        replacement = rule.template.format(url=url, netloc=netloc)
        found = 0

        def replace(match: re.Match[str], replacement: str = replacement, rule: Rule = rule) -> str:
            nonlocal found
            found += 1
            hosts.add(_host_of(rule, match.group(0)))
            return replacement

        text = rule.pattern.sub(replace, text)
        if not found:
            misses.append(rule.name)
    if _RESIDUE.search(text):
        misses.append("residue")
    return Rewritten(text, tuple(sorted(hosts)), tuple(misses))


def google_hosts_in(script: str) -> list[str]:
    """Every Google host the text names in a URL (what a rewritten tag must no longer name)."""
    return sorted({m.group(0).split("://", 1)[1] for m in re.finditer(
        r"https?://" + _GOOGLE_HOST, script)})


def _host_of(rule: Rule, matched: str) -> str:
    """The host a rule's match named, for the report (templated hosts as the rule labels them)."""
    if rule.label:
        return rule.label
    text = matched.strip('"').replace("{ga4CollectionSubdomain.}", "<region>.")
    return text.split("://", 1)[1] if "://" in text else text
