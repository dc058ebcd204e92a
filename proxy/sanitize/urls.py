"""Page URLs (``dl``, internal ``dr``) and paths (``dp``) cut down to what a report needs.

What is kept: scheme, lower-cased host, a non-default port, the path, and in the balanced
profile the allow-listed query keys. What goes: user info, the fragment, every other query key
(click ids, the ``_gl`` linker, session ids), matrix parameters (``;jsessionid=``), and path
segments that look like identifiers, which become fixed markers (``/order/:id``).

Every call reports the names of the rules that fired, for the audit trail. No cache anywhere:
a cache keyed by URL would keep visitors' URLs, queries included, in memory.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import NamedTuple
from urllib.parse import SplitResult, quote, unquote_plus, urlsplit

from proxy.sanitize.normalize import view
from proxy.sanitize.pii import PiiScrubber
from proxy.sanitize.secrets import has_random_run

__all__ = ["DEFAULT_PORTS", "PATH_MARKERS", "UrlScrubber"]

DEFAULT_PORTS = {"http": 80, "https": 443}

# Rule name -> the marker that replaces the whole segment. Whole segment, not the matching part:
# "/order/:id" groups in reports, "/order-:id-confirmed" would not.
PATH_MARKERS = {
    "path_email": ":email",
    "path_uuid": ":uuid",
    "path_id": ":id",
    "path_token": ":token",
    "path_pii": ":pii",
}

_UNPARSEABLE = ("unparseable",)
_MARKERS = frozenset(PATH_MARKERS.values())

# urlsplit keeps an LRU cache of the last 128 URLs it split, queries included; the function
# under the cache (documented functools.update_wrapper attribute) keeps nothing.
_urlsplit: Callable[[str], SplitResult] = getattr(urlsplit, "__wrapped__", urlsplit)

# Letters, digits, "-", "." and "_" (not valid in DNS names, but seen in hosts); Unicode
# letters because some clients send IDN hosts undecoded.
_HOST = re.compile(r"[\w.\-]+")
# An ASCII segment without a digit, "@", "%", "&", ";", a bracket or a lower-upper change
# cannot hold any identifier the rules look for: no number, no address (spelled-out ones have
# brackets or escaped spaces), no base64 (mixed case). The one miss: an all-letter hex run of
# 24+, which is not a thing in practice.
_SUSPECT = re.compile(r"[\d@%;&\[(]|[^\x00-\x7f]|[a-z][A-Z]")
_ANY_DIGIT = re.compile(r"\d")
# Nothing a rule looks for fits in fewer characters (a 6-digit id, "1.2.3.4"), bar IPv6
# addresses such as "1::" and "@a.io": those have a colon or an "@".
_SHORTEST_SUSPECT = 6
# "@domain.tld", with or without a local part: in the forwarded URL, the path or "key=" before
# it would read as one ("/@jane.doe", "?ref=@example.com").
_AT_DOMAIN = re.compile(r"@(?!\d+(?:\.\d+)?x\.[A-Za-z]{2,5}$)[\w-]+(?:\.[\w-]+)+")
_UUID = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}",
                   re.ASCII | re.IGNORECASE)
_LONG_NUMBER = re.compile(r"\d{6,}")
_TOKEN = re.compile(
    r"(?<![A-Za-z0-9])"
    r"(?:[0-9A-Fa-f]{24,}"                              # hex: hashes, object ids
    r"|(?=[A-Za-z]*\d)(?=\d*[A-Za-z])[A-Za-z0-9]{16,})"  # letters and digits mixed: keys
    r"(?![A-Za-z0-9])",
    re.ASCII,
)


class _Parts(NamedTuple):
    scheme: str
    host: str
    authority: str  # host, bracketed if IPv6, and ":port" when not the scheme's default
    split: SplitResult
    userinfo: bool
    address: bool  # the host is an IP address (not loopback): the URL is never forwarded


# A host whose last label is a number (or hex) is an IPv4 address in one of its spellings
# ("203.0.113.9", "3405803785", "0xcb.0.113.9"): no top-level domain is numeric.
_NUMERIC_HOST = re.compile(r"(?:^|\.)(?:\d+|0x[0-9a-f]*)\.?$")
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1"})
_ADDRESS_HOST = ("address_host",)
_PLAIN_HOST = re.compile(r"https?://([A-Za-z0-9.-]+)(?=[/?#]|$)", re.IGNORECASE | re.ASCII)


def _split(url: str) -> _Parts | None:
    try:
        split = _urlsplit(url.strip())
        scheme = split.scheme  # urlsplit lower-cases it
        if scheme not in DEFAULT_PORTS:
            return None
        host = split.hostname  # lower-cased, without user info and brackets
        if not host:
            return None
        address = ":" in host or bool(_NUMERIC_HOST.search(host))
        if ":" in host:
            ipaddress.IPv6Address(host)
            authority = f"[{host}]"
        elif _HOST.fullmatch(host):
            authority = host
        else:
            return None
        if address and host not in _LOOPBACK_HOSTS:
            # An address as the host: a visitor's own, for all the proxy knows (a page
            # saved and opened from a home server, a crafted beacon). A developer's
            # loopback page is nobody's.
            return _Parts(scheme, host, authority, split, "@" in split.netloc, True)
        port = split.port  # ValueError when not a number in 0-65535
    except ValueError:
        return None
    if port is not None and port != DEFAULT_PORTS[scheme]:
        authority = f"{authority}:{port}"
    return _Parts(scheme, host, authority, split, "@" in split.netloc, False)


class UrlScrubber:
    """Generalises page URLs and paths; built once from the query allow-list."""

    def __init__(self, query_allowlist: Iterable[str], pii: PiiScrubber) -> None:
        """``query_allowlist``: query keys kept (exact, case-sensitive); their values are
        PII-scrubbed. ``pii``: the scrubber for those values and for path segments."""
        keys = (query_allowlist,) if isinstance(query_allowlist, str) else query_allowlist
        self._allowed = frozenset(keys)
        self._pii = pii

    @property
    def query_allowlist(self) -> frozenset[str]:
        """The query keys ``page`` keeps."""
        return self._allowed

    def page(self, url: str) -> tuple[str | None, tuple[str, ...]]:
        """``dl``: ``scheme://host[:port]/path[?allowed=...]``, and the rules that fired.
        ``(None, ("unparseable",))`` for anything but a parseable http(s) URL, and
        ``(None, ("address_host",))`` for one whose host is an IP address (bar loopback)."""
        parts = _split(url)
        if parts is None:
            return None, _UNPARSEABLE
        if parts.address:
            return None, _ADDRESS_HOST
        rules: list[str] = ["userinfo"] if parts.userinfo else []
        split = parts.split
        path = self._path(split.path, rules) if split.path else "/"
        if split.fragment and not split.query:
            path = self._fragment_joined(path, split.fragment, rules)
        query = self._query(split.query, rules) if split.query else ""
        if split.fragment:
            rules.append("fragment")
        out = f"{parts.scheme}://{parts.authority}{path}"
        return (f"{out}?{query}" if query else out), tuple(rules)

    def path(self, path: str) -> tuple[str | None, tuple[str, ...]]:
        """``dp``: the path with identifier segments replaced; query and fragment dropped.
        ``None`` for an empty value, and with ``("unparseable",)`` for one not starting "/"."""
        rules: list[str] = []
        path, hash_mark, fragment = path.partition("#")
        path, question_mark, _ = path.partition("?")
        if question_mark:
            rules.append("query")
        if hash_mark:
            rules.append("fragment")
        if not path:
            return None, tuple(rules)
        if path[0] != "/":
            return None, _UNPARSEABLE
        out = self._path(path, rules)
        if hash_mark and not question_mark:
            out = self._fragment_joined(out, fragment, rules)
        return out, tuple(rules)

    @staticmethod
    def host(url: str) -> str | None:
        """The lower-case host name of an http(s) URL, or ``None``."""
        # Fast path for the usual shape (no user info, no port): called for dl and dr of
        # every beacon. Anything unusual takes the full parse.
        match = _PLAIN_HOST.match(url)
        if match:
            host = match.group(1).lower()
            if _HOST.fullmatch(host):
                return host
        parts = _split(url)
        return parts.host if parts else None

    @staticmethod
    def origin(url: str) -> str | None:
        """``scheme://host[:port]/`` of an http(s) URL (no user info), or ``None`` (also
        when the host is an address)."""
        parts = _split(url)
        return f"{parts.scheme}://{parts.authority}/" if parts and not parts.address else None

    def _path(self, path: str, rules: list[str]) -> str:
        if not _SUSPECT.search(path):
            return path  # the common case: "/products/", "/2024/05/my-post" has only short digits
        segments = path.split("/")
        for index, segment in enumerate(segments):
            if not segment or not _SUSPECT.search(segment):
                continue
            rule = None
            if ";" in segment:
                # The whole segment first: the ";" may end an entity ("zelda&#64;example.org").
                rule = self._segment_rule(segment)
                # Matrix parameters (";jsessionid=...") are URL parameters too.
                segment = segments[index] = segment.partition(";")[0]
                _add(rules, "path_params")
            rule = rule or self._segment_rule(segment)
            if rule is not None:
                segments[index] = PATH_MARKERS[rule]
                _add(rules, rule)
        return "/".join(segments)

    def _fragment_joined(self, path: str, fragment: str, rules: list[str]) -> str:
        # "/u/zelda&#64;example.org": the entity's "#" starts the fragment, which is dropped,
        # but the last segment and the fragment read together hold the address.
        head, slash, last = path.rpartition("/")
        if not last or last in _MARKERS:
            return path
        rule = self._segment_rule(f"{last}#{fragment}")
        if rule is None:
            return path
        _add(rules, rule)
        return f"{head}{slash}{PATH_MARKERS[rule]}"

    def _segment_rule(self, segment: str) -> str | None:
        if (len(segment) < _SHORTEST_SUSPECT and segment.isascii()
                and ":" not in segment and "@" not in segment):
            return None  # "2024", "05", "p2": the common case for segments with digits
        text = view(segment)
        if "@" in text and _AT_DOMAIN.search(text):
            return "path_email"
        if _ANY_DIGIT.search(text):
            # UUID before long number: a UUID holds digit runs of up to 12.
            if _UUID.search(text):
                return "path_uuid"
            if _LONG_NUMBER.search(text):
                return "path_id"
            # Split runs too ("zQ8v-Kp3L_9xTq-Ab2D-mN7w"), whatever detectors are configured.
            if _TOKEN.search(text) or has_random_run(text):
                return "path_token"
            if self._pii.scrub(text)[1]:
                return "path_pii"
        # The segment is forwarded as it came, escapes included, and "%00::" reads as an IPv6
        # address there even though "\x00::" is not one.
        if text != segment and self._pii.scrub(segment)[1]:
            return "path_pii"
        return None

    def _query(self, query: str, rules: list[str]) -> str:
        if not self._allowed:
            rules.append("query")
            return ""
        kept: list[str] = []
        dropped = scrubbed = False
        for pair in query.split("&"):
            if not pair:
                continue
            raw_key, _, raw_value = pair.partition("=")
            key = unquote_plus(raw_key)
            if key not in self._allowed:
                dropped = True
                continue
            value, fired = self._pii.scrub(unquote_plus(raw_value))
            changed = bool(fired)
            if "@" in value:
                value, count = _AT_DOMAIN.subn("[email]", value)
                changed = changed or count > 0
            if changed:
                raw_value = quote(value, safe="")
            if "%" in raw_value:
                # The value is forwarded encoded and read that way downstream, where "%00::"
                # holds an IPv6 address although "\x00::" does not.
                raw_value, fired = self._pii.scrub(raw_value)
                changed = changed or bool(fired)
            if changed:
                scrubbed = True
                pair = f"{quote(key, safe='')}={raw_value}"
            # Untouched pairs keep their original encoding: nothing in them changed.
            kept.append(pair)
        if dropped:
            rules.append("query")
        if scrubbed:
            rules.append("query_pii")
        return "&".join(kept)


def _add(rules: list[str], rule: str) -> None:
    if rule not in rules:
        rules.append(rule)
