"""Didomi: ``didomi_token`` base64 JSON, custom vendor ids matched by prefix."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

import pytest

from proxy.consent.didomi import DidomiOptions, compile_source, decode_token
from proxy.consent.verdict import ConsentInput, Verdict
from proxy.ingest.cookies import parse_cookie_header

GRANT, DENY, ABSTAIN = Verdict.GRANT, Verdict.DENY, Verdict.ABSTAIN

GA = "c:googleana-4TXnJigR"


def token(
    enabled: list[Any] | None = None,
    disabled: list[Any] | None = None,
    *,
    alphabet: str = "url",
    padded: bool = False,
    li: list[str] | None = None,
) -> str:
    body: dict[str, Any] = {
        "user_id": "17c5f5f1-0b3a-6b9c-a3a9-e4a1c6e6d7f1",
        "created": "2024-03-01T10:00:00.000Z",
        "vendors": {"enabled": enabled or [], "disabled": disabled or []},
        "purposes": {"enabled": ["analytics"], "disabled": []},
        "version": 2,
    }
    if li is not None:
        body["vendors_li"] = {"enabled": li, "disabled": []}
    # Bytes that make the url-safe and standard encodings differ (checked below).
    body["note"] = "ééé>>>???"
    raw = json.dumps(body).encode()
    encoded = (base64.urlsafe_b64encode if alphabet == "url" else base64.b64encode)(raw).decode()
    return f"didomi_token={encoded if padded else encoded.rstrip('=')}"


def verdict(header: str, **options: Any) -> Verdict:
    source = compile_source(DidomiOptions(**options))
    return source(ConsentInput(cookies=parse_cookie_header(header), events=(), now=0.0))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (token(enabled=["google", GA]), GRANT),
        (token(enabled=[GA], alphabet="standard"), GRANT),
        (token(enabled=[GA], padded=True), GRANT),
        (token(enabled=[GA], alphabet="standard", padded=True), GRANT),
        ("didomi_token=" + quote(token(enabled=[GA], padded=True)[13:], safe=""), GRANT),
        (token(disabled=[GA]), DENY),
        (token(enabled=["google"], disabled=[GA]), DENY),
        (token(enabled=[GA], disabled=[GA]), DENY),  # contradictory: the refusal wins
        (token(enabled=["c:googleana-AAA"], disabled=["c:googleana-BBB"]), DENY),
    ],
    ids=lambda value: repr(value)[:60],
)
def test_enabled_grants_and_disabled_denies(header: str, expected: Verdict) -> None:
    assert verdict(header) is expected


@pytest.mark.parametrize(
    "header",
    [
        "",
        "didomi_token=",
        token(enabled=["google", "c:hotjar-abc"]),
        token(li=[GA]),  # legitimate interest is never consent
        token(enabled=["c:googleanalytics"]),  # "c:googleana-" needs the dash
        token(enabled=[1, None, {"id": GA}]),
        "didomi_token=not base64!",
        "didomi_token=abcde",  # no padding can repair this length
        "didomi_token=" + base64.urlsafe_b64encode(b"not json").decode(),
        "didomi_token=" + base64.urlsafe_b64encode(b"[1, 2]").decode(),
        "didomi_token=" + base64.urlsafe_b64encode(b'{"vendors": []}').decode(),
        "didomi_token=" + base64.urlsafe_b64encode(b'{"vendors": {"enabled": "x"}}').decode(),
        "didomi_token=" + base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(),
        "didomi_token=é",
    ],
    ids=lambda value: repr(value)[:60],
)
def test_absent_or_undecodable_values_abstain(header: str) -> None:
    assert verdict(header) is ABSTAIN


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (token(enabled=[GA]) + "; " + token(disabled=[GA]), DENY),
        (token(disabled=[GA]) + "; " + token(enabled=[GA]), DENY),
        ("didomi_token=junk; " + token(enabled=[GA]), GRANT),
    ],
    ids=lambda value: repr(value)[:60],
)
def test_every_copy_counts_and_deny_wins(header: str, expected: Verdict) -> None:
    assert verdict(header) is expected


@pytest.mark.parametrize(
    ("header", "vendors", "expected"),
    [
        (token(enabled=["google"]), ("google",), GRANT),
        (token(enabled=["google-x"]), ("google",), ABSTAIN),  # no star: an exact id
        (token(enabled=["google", GA]), ("google", "c:googleana-*"), GRANT),
        (token(enabled=[GA]), ("google", "c:googleana-*"), ABSTAIN),
        (token(enabled=[GA], disabled=["google"]), ("google", "c:googleana-*"), DENY),
        (token(enabled=["c:ga4-x1"]), ("c:ga4-*",), GRANT),
    ],
    ids=repr,
)
def test_every_configured_vendor_must_be_enabled(
    header: str, vendors: tuple[str, ...], expected: Verdict
) -> None:
    assert verdict(header, vendors=vendors) is expected


def test_cookie_name_is_an_option() -> None:
    header = token(enabled=[GA]).replace("didomi_token=", "dt=")
    assert verdict(header, cookie="dt") is GRANT
    assert verdict(header) is ABSTAIN


@pytest.mark.parametrize("options", [{"vendors": ()}, {"vendors": ("*",)}, {"cookie": ""}])
def test_empty_or_match_all_options_fail_at_compile_time(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="didomi"):
        compile_source(DidomiOptions(**options))


def test_token_decodes_from_either_alphabet() -> None:
    url = token(enabled=[GA])[len("didomi_token="):]
    standard = token(enabled=[GA], alphabet="standard")[len("didomi_token="):]
    assert url != standard
    assert decode_token(url) == decode_token(standard)
