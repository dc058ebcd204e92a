"""The profile table of privacy-requirements.md §2, parameter by parameter."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from proxy.config import ConfigError, Privacy, from_mapping
from proxy.ingest.beacon import parse
from proxy.sanitize.policy import Action, EventContext, compile_policy
from proxy.sanitize.sanitizer import Sanitizer

TID = "G-TEST1234"


def sanitizer(profile: str = "strict", **privacy: Any) -> Sanitizer:
    config = from_mapping(
        {
            "measurement_ids": [TID],
            "allowed_origins": ["https://www.example.com"],
            "privacy": {"profile": profile, **privacy},
        },
        env={},
    )
    return Sanitizer(compile_policy(config.privacy, config.allowed_origins))


def run(s: Sanitizer, params: dict[str, str], body: str = "") -> tuple[dict[str, str], Any]:
    query = "&".join(
        f"{k}={quote(v, safe='')}" for k, v in {"v": "2", "tid": TID, **params}.items()
    )
    result = s.sanitize(parse(query, body.encode()), lambda cid: "PSEUDO.1", trace=True)
    return result.shared, result


KEEP_BOTH = [
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
    "gcs",
    "gcd",
    "gcu",
    "gcut",
    "dma",
    "dma_cps",
    "pscdl",
    "sid",
    "_fv",
    "ul",
]
DROP_BOTH = [
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
    "sst.uc",
    "sst.etld",
    "richsstsse",
    "us_privacy",
    "gdpr",
    "gdpr_consent",
    "tcfd",
    "tt",
    "_dbg",
    "uaa",
    "uab",
    "uafvl",
    "uam",
    "uapv",
    "uaw",
    "up.crm",
    "ep.unlisted",
    "epn.unlisted",
    "unknown_param",
    "pr1k",
]


@pytest.mark.parametrize("profile", ["strict", "balanced"])
@pytest.mark.parametrize("name", KEEP_BOTH)
def test_technical_and_consent_parameters_are_kept(profile: str, name: str) -> None:
    value = {"en": "page_view", "cu": "EUR", "gcs": "G111", "ul": "en-gb",
             "gtm": "45je4730v877985709z88933",
             "tag_exp": "101509157~103116026"}.get(name, "1")
    shared, _ = run(sanitizer(profile), {name: value})
    assert shared[name] == value


@pytest.mark.parametrize("profile", ["strict", "balanced"])
@pytest.mark.parametrize("name", DROP_BOTH)
def test_identifiers_and_unknown_parameters_are_dropped(profile: str, name: str) -> None:
    shared, _ = run(sanitizer(profile), {name: "someone@example.com"})
    assert name not in shared


@pytest.mark.parametrize(
    ("name", "strict", "balanced"),
    [
        ("sct", None, "31"),
        ("sr", None, "1920x1080"),
        ("uamb", None, "0"),
        ("uap", None, "macOS"),
        ("cn", None, "spring_sale"),
        ("cs", None, "newsletter"),
    ],
)
def test_parameters_the_profiles_treat_differently(
    name: str, strict: str | None, balanced: str | None
) -> None:
    value = {
        "sct": "31",
        "sr": "1920x1080",
        "uamb": "0",
        "uap": "macOS",
        "cn": "spring_sale",
        "cs": "newsletter",
    }[name]
    assert run(sanitizer("strict"), {name: value})[0].get(name) == strict
    assert run(sanitizer("balanced"), {name: value})[0].get(name) == balanced


@pytest.mark.parametrize(
    ("raw", "bucket"),
    [
        ("1920x1080", "1920x1080"),
        ("1918x1077", "1920x1080"),
        ("3589x297", "3840x2160"),  # the long side decides, whatever the shape
        ("390x844", "414x896"),
        ("844x390", "896x414"),  # orientation is kept
        ("1728x1117", "1920x1080"),
        ("1366x768", "1366x768"),
        ("abc", None),
        ("99999999x1", None),
    ],
)
def test_balanced_screen_resolution_is_a_coarse_class(raw: str, bucket: str | None) -> None:
    assert run(sanitizer("balanced"), {"sr": raw})[0].get("sr") == bucket


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("_c", "jane@example.com"),
        ("_p", "198.51.100.7"),
        ("gtm", "198.51.100.7"),
        ("_z", "a b"),
        ("gcs", "G1xx"),
        ("ul", "jane doe"),
        ("cu", "EURO"),
        ("sid", "+44 20 7946 0958"),
        ("tid", "G-lower"),
    ],
)
def test_technical_parameter_with_a_foreign_shape_is_dropped(name: str, value: str) -> None:
    shared, _ = run(sanitizer("balanced"), {name: value})
    assert name not in shared


def test_cid_is_replaced_and_npa_forced() -> None:
    shared, result = run(sanitizer(), {"cid": "1141082648.1693483972", "npa": "0"})
    assert shared["cid"] == "PSEUDO.1"
    assert shared["npa"] == "1"
    actions = {(c.param, c.action) for c in result.changes}
    assert ("cid", Action.REPLACED) in actions
    assert ("npa", Action.FORCED) in actions


def test_page_url_loses_query_and_fragment_in_strict() -> None:
    shared, _ = run(sanitizer(), {"dl": "https://www.example.com/p?utm_source=x&gclid=y#top"})
    assert shared["dl"] == "https://www.example.com/p"


def test_balanced_keeps_utm_and_allow_listed_query_keys() -> None:
    s = sanitizer("balanced", url_query_allowlist=["page"])
    shared, _ = run(s, {"dl": "https://www.example.com/p?utm_source=news&page=2&gclid=y"})
    assert shared["dl"] == "https://www.example.com/p?utm_source=news&page=2"


@pytest.mark.parametrize(
    ("profile", "referrer", "expected"),
    [
        ("strict", "https://www.example.com/from?q=1", "https://www.example.com/from"),
        ("strict", "https://www.google.com/search?q=my+name", None),
        ("balanced", "https://www.google.com/search?q=my+name", "https://www.google.com/"),
        ("balanced", "https://www.example.com/from?q=1", "https://www.example.com/from"),
        ("strict", "not a url", None),
    ],
)
def test_referrer_internal_kept_as_page_external_dropped_or_origin(
    profile: str, referrer: str, expected: str | None
) -> None:
    shared, _ = run(sanitizer(profile), {"dl": "https://www.example.com/", "dr": referrer})
    assert shared.get("dr") == expected


def test_referrer_on_the_page_host_is_internal_without_allowed_origins() -> None:
    shared, _ = run(
        sanitizer(), {"dl": "https://shop.example.org/a", "dr": "https://shop.example.org/b?x=1"}
    )
    assert shared["dr"] == "https://shop.example.org/b"


def test_title_is_scrubbed_of_pii() -> None:
    shared, result = run(sanitizer(), {"dt": "Order for jane.doe@example.com | Shop"})
    assert "jane.doe@example.com" not in shared["dt"]
    change = next(c for c in result.changes if c.param == "dt")
    assert change.action is Action.SCRUBBED and "email" in change.detail


def test_allow_listed_event_params_are_kept_and_scrubbed() -> None:
    s = sanitizer(event_params=["plan", "percent_scrolled"])
    shared, _ = run(
        s, {"ep.plan": "pro for a@b.example", "epn.percent_scrolled": "90", "ep.secret": "x"}
    )
    assert "a@b.example" not in shared["ep.plan"]
    assert shared["epn.percent_scrolled"] == "90"
    assert "ep.secret" not in shared


def test_event_params_outside_the_allow_list_say_so() -> None:
    _, result = run(sanitizer(), {"epn.percent_scrolled": "90", "zz": "1"})
    rules = {c.param: c.rule for c in result.changes}
    assert rules == {"v": "technical", "tid": "technical", "epn.percent_scrolled":
                     "not_allow_listed", "zz": "unknown", "npa": "proxy_set"}


def test_numeric_event_param_must_be_a_number() -> None:
    s = sanitizer(event_params=["n"])
    assert "epn.n" not in run(s, {"epn.n": "12 Main Street"})[0]


def test_user_properties_only_in_balanced_and_only_allow_listed() -> None:
    params = {"up.tier": "gold", "up.crm_id": "C-1234"}
    assert "up.tier" not in run(sanitizer("strict", user_properties=["tier"]), params)[0]
    shared, _ = run(sanitizer("balanced", user_properties=["tier"]), params)
    assert shared["up.tier"] == "gold" and "up.crm_id" not in shared


def test_items_keep_standard_keys_drop_custom_pairs() -> None:
    shared, _ = run(sanitizer(), {"pr1": "idSKU_1~nmShirt~k0email~v0a@b.example~qt2"})
    assert shared["pr1"] == "idSKU_1~nmShirt~qt2"


def test_invalid_event_name_is_dropped() -> None:
    assert "en" not in run(sanitizer(), {"en": "hello world@example.com"})[0]


def test_debug_hits_forwarded_only_when_enabled() -> None:
    assert "_dbg" not in run(sanitizer(), {"_dbg": "1"})[0]
    assert run(sanitizer(forward_debug=True), {"_dbg": "1"})[0]["_dbg"] == "1"


def test_overrides_change_single_parameters() -> None:
    s = sanitizer(overrides={"dt": "drop", "sct": "keep"})
    shared, _ = run(s, {"dt": "Home", "sct": "3"})
    assert "dt" not in shared and shared["sct"] == "3"


@pytest.mark.parametrize("name", ["cid", "uid", "_uip"])
def test_never_forwarded_parameters_cannot_be_overridden_to_keep(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        sanitizer(overrides={name: "keep"})


def test_body_lines_are_sanitised_like_the_query() -> None:
    s = sanitizer()
    _, result = run(s, {"cid": "1.2"}, body="en=a&uid=u1&dt=mail%20x%40y.example\nen=b&sct=4")
    assert result.lines[0]["en"] == "a"
    assert "uid" not in result.lines[0]
    assert "x@y.example" not in result.lines[0].get("dt", "")
    assert result.lines[1] == {"en": "b"}


@pytest.mark.parametrize(("value", "sent"), [("WWW.Example.com", "www.example.com"),
                                             ("198.51.100.77", None), ("0.0.0.0", None),
                                             ("a.198.51.100.77.nip.io", None)])
def test_hostname_is_kept_only_when_not_an_address(value: str, sent: str | None) -> None:
    assert run(sanitizer(), {"dh": value})[0].get("dh") == sent



# Values of a shape-checked field that a site could write there itself: by the scrubber's own
# definitions each is a phone, card or IBAN number, and none may pass the shape.
PERSONAL_IN_TECHNICAL = [
    ("_c", "0100000000"),  # found by the property test: a trunk-0 phone in a flag
    ("_et", "07700900123"),
    ("_p", "4111111111111111"),  # a card where the page-load id goes
    ("_p", "4222222222222"),  # 13 digits, Visa, Luhn-valid
    ("sid", "07700900123"),
    ("gtm", "4111111111111111"),
    ("gtm", "v4111111111111111"),
    ("gtm", "07700900123"),
    ("tag_exp", "07700900123"),
    ("tag_exp", "101509157~4111111111111111"),
    ("ul", "en-12345-678901"),
    ("en", "GB82WEST12345698765432"),
    ("en", "click_4111111111111111"),
    ("_z", "GB82WEST12345698765432"),
    ("_z", "020.7946.0958"),
    ("gaf", "jane@example.com"),
    ("pscdl", "07700900123"),
    ("dh", "gb82west12345698765432"),
    ("dh", "020-7946-0958.example.com"),
]


@pytest.mark.parametrize(("name", "value"), PERSONAL_IN_TECHNICAL)
@pytest.mark.parametrize("profile", ["strict", "balanced"])
def test_no_personal_number_passes_a_technical_shape(name: str, value: str, profile: str) -> None:
    from proxy.sanitize.pii import PiiScrubber

    assert PiiScrubber().scrub(value)[1], "the case must be personal by the scrubber's rules"
    fn = compile_policy(Privacy(profile=profile)).rule(name).fn
    assert fn is not None
    assert fn(value, EventContext("www.example.com", str)) is None


def test_numbers_keep_their_shape_but_not_a_phone_or_card() -> None:
    policy = compile_policy(Privacy(event_params=["price"]))
    fn = policy.rule("epn.price").fn
    assert fn is not None
    ctx = EventContext("www.example.com", str)
    kept = ("0", "12.5", "-3", "0.25", "99999999", "999999.99")
    assert [fn(v, ctx) for v in kept] == list(kept)
    # Nine digits or more make room for a phone or identity number, with or without a point.
    refused = ("07700900123", "4111111111111111", "007", "536221234", "5362.21234")
    assert [fn(v, ctx) for v in refused] == [None] * len(refused)
