"""No input makes a source raise: arbitrary cookie values, headers, gcs/gcd and near-misses.

The gate drops on an exception anyway; these prove the sources abstain on their own instead.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.consent.registry import COMPILERS, default_sources
from proxy.consent.verdict import ConsentInput, ConsentSource, Verdict
from proxy.ingest.cookies import CookieJar, UnreadableCookie, parse_cookie_header

SOURCES: list[ConsentSource] = [COMPILERS[type(options)](options) for options in default_sources()]

COOKIE_NAMES = [
    "CookieConsent", "OptanonConsent", "OptanonAlertBoxClosed", "cookieyes-consent",
    "cmplz_statistics", "cmplz_rt_statistics", "klaro", "didomi_token", "borlabs-cookie",
    "_iub_cs-123", "_iub_cs-123-uspr", "CookieControl", "axeptio_cookies", "cc_cookie",
    "euconsent-v2", "eupubconsent-v2", "analytics_consent",
]

any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=300)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12,
)
# Objects whose keys are the ones sources look for, so the deeper branches are reached.
KEYS = [
    "statistics", "analytics", "google-analytics", "google_analytics", "purposes", "4", "consent",
    "vendors", "enabled", "disabled", "consents", "optionalCookies", "interactedWith",
    "consentDate", "consentExpiry", "categories", "level", "expirationTime", "$$completed",
]
json_objects = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6)


def encodings(payload: str) -> st.SearchStrategy[str]:
    raw = payload.encode("utf-8", "surrogatepass")
    return st.sampled_from([
        payload,
        quote(payload, safe=""),
        quote(quote(payload, safe=""), safe=""),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        base64.b64encode(raw).decode(),
    ])


json_cookie_values = json_objects.map(lambda value: json.dumps(value)).flatmap(encodings)
binary_base64 = st.binary(max_size=200).map(
    lambda data: base64.urlsafe_b64encode(data).decode().rstrip("=")
)
cookie_values = st.one_of(any_text, json_cookie_values, binary_base64)
jars = st.dictionaries(
    st.sampled_from(COOKIE_NAMES) | st.text(max_size=20),
    st.lists(cookie_values, min_size=1, max_size=3),
    max_size=6,
)
gc_values = st.one_of(any_text, st.text("0123456789abcdefghijklmnopqrstuvwxyzPG-_", max_size=16))
events = st.lists(
    st.fixed_dictionaries({}, optional={"gcs": gc_values, "gcd": gc_values})
    | st.dictionaries(st.text(max_size=8), any_text, max_size=4),
    max_size=4,
)
nows = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**20), 10**20).map(float)


def run_all(cookies: CookieJar, evts: list[dict[str, str]], now: float) -> None:
    inp = ConsentInput(cookies=cookies, events=evts, now=now)
    for source in SOURCES:
        assert isinstance(source(inp), Verdict)


@settings(max_examples=400, deadline=None)
@given(jar=jars, evts=events, now=nows)
def test_arbitrary_cookie_values_and_consent_mode_params_never_raise(
    jar: CookieJar, evts: list[dict[str, str]], now: float
) -> None:
    run_all(jar, evts, now)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(COOKIE_NAMES), value=st.text())
def test_any_text_in_any_consent_cookie_never_raises(name: str, value: str) -> None:
    run_all({name: [value]}, [], 1_780_000_000.0)


@settings(max_examples=300, deadline=None)
@given(gcs=st.text(), gcd=st.text())
def test_any_gcs_and_gcd_never_raise(gcs: str, gcd: str) -> None:
    run_all({}, [{"gcs": gcs, "gcd": gcd}, {"gcd": gcd}, {"gcs": gcs}], 0.0)


@settings(max_examples=300, deadline=None)
@given(header=any_text)
def test_any_cookie_header_is_read_or_refused_and_never_raises_otherwise(header: str) -> None:
    try:
        jar = parse_cookie_header(header)
    except UnreadableCookie:
        # Undecodable (lone surrogates): refused, which drops the beacon as consent_error.
        return
    run_all(jar, [], 0.0)


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(0, 200), flip=st.integers(0, 199), char=st.sampled_from("A_-/Q9"))
def test_mangled_real_tc_strings_never_raise(cut: int, flip: int, char: str) -> None:
    real = "CQbB_cAQbB_cAAHABBENCFFsAP_gAAAAAAAAHXwCAAIAAqABaAFsAUgBZgF5gOvAAAAKSgAwABBd8pAB"
    mangled = real[:flip] + char + real[flip + 1:]
    values: list[Any] = [real[:cut], mangled, mangled[:cut]]
    run_all({"euconsent-v2": values}, [], 0.0)
