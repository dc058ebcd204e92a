"""A checked request through the compiled policy, in-process: what each Measurement
Protocol field becomes, per profile, with the trace ``explain`` and the audit read."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from proxy.mp.ingest import MeasurementProtocol, MpResult
from proxy.mp.schema import InvalidRequest, parse
from proxy.pipeline import Pipeline
from proxy.state.pseudonym import Pseudonymizer
from proxy.state.salts import MemoryState
from tests.mp.conftest import CLIENT_ID, TID, event_body, mp_config

NOW = 1_800_000_000.0


async def process(body: dict[str, Any], **privacy: Any) -> MpResult:
    config = mp_config(None, privacy=privacy) if privacy else mp_config(None)
    pipeline = Pipeline(config, Pseudonymizer(MemoryState(), bits=32, rotation=86400))
    mp = MeasurementProtocol(config, pipeline, clock=lambda: NOW)
    return await mp.process(TID, json.dumps(body).encode(), trace=True)


def sent(result: MpResult) -> dict[str, Any]:
    assert result.outcome.outbound is not None, result.outcome
    body: dict[str, Any] = json.loads(result.outcome.outbound.body)
    return body


async def test_allow_listed_params_and_items_keep_their_names_and_types() -> None:
    body = event_body(events=[{"name": "purchase", "params": {
        "value": 42.5, "transaction_id": "T-1001", "coupon": "SPRING", "currency": "EUR",
        "items": [{"item_id": "SKU-1", "price": 42.5, "quantity": 2, "mystery": "x"}]}}])
    out = sent(await process(body, event_params=["value", "transaction_id"]))
    (event,) = out["events"]
    assert event["params"] == {"value": 42.5, "transaction_id": "T-1001", "currency": "EUR",
                               "items": [{"item_id": "SKU-1", "price": 42.5, "quantity": 2}]}


@pytest.mark.parametrize(
    ("profile", "expected"),
    [("strict", None), ("balanced", {"plan": {"value": "pro"}})],
)
async def test_user_properties_follow_the_profile_and_the_allow_list(
    profile: str, expected: dict[str, Any] | None
) -> None:
    body = event_body(user_properties={"plan": {"value": "pro"}, "email": {"value": "x"}})
    out = sent(await process(body, profile=profile, user_properties=["plan"]))
    assert out.get("user_properties") == expected


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ({"category": "Mobile", "operating_system": "Android", "operating_system_version":
          "14.1", "model": "Pixel 8 Pro", "brand": "Google", "browser": "Chrome",
          "browser_version": "122.0.6261.69"},
         {"category": "mobile", "operating_system": "Android", "browser": "Chrome",
          "browser_version": "122"}),
        ({"category": "toaster", "operating_system": "RareOS 0.1", "browser": "Lynx"}, None),
        ({"screen_resolution": "1080x2400", "language": "fr-fr"}, {"language": "fr-fr"}),
    ],
    ids=["generalised", "rare-values-dropped", "screen-dropped-in-strict"],
)
async def test_the_device_is_generalised_like_the_user_agent(
    device: dict[str, Any], expected: dict[str, Any] | None
) -> None:
    assert sent(await process(event_body(device=device))).get("device") == expected


@pytest.mark.parametrize(
    ("offset", "kept"),
    [(-3600, True), (-67 * 3600, True), (-69 * 3600, False), (30, True), (3600, False)],
    ids=["1h-ago", "67h-ago", "beyond-72h-less-outbox-age", "small-skew", "1h-ahead"],
)
async def test_timestamp_micros_is_kept_only_inside_ga_s_window(offset: int, kept: bool) -> None:
    stamp = int((NOW + offset) * 1e6)
    out = sent(await process(event_body(timestamp_micros=stamp)))
    assert ("timestamp_micros" in out) is kept
    assert out["events"]  # the events go on, dated by GA on arrival


@pytest.mark.parametrize(
    ("ip_override", "mode", "expected"),
    [("198.51.100.77", "truncated", "198.51.100.0"), ("2001:db8:1:2::7", "truncated",
      "2001:db8:1::"), ("198.51.100.77", "omit", None), ("not-an-address", "truncated", None),
     (None, "truncated", None)],
)
async def test_ip_override_is_what_the_location_mode_sends_never_more(
    ip_override: str | None, mode: str, expected: str | None
) -> None:
    body = event_body(ip_override=ip_override, user_location={"city": "Paris"})
    out = sent(await process(body, location={"mode": mode}))
    assert out.get("ip_override") == expected
    assert "user_location" not in out


async def test_an_event_whose_name_the_policy_refuses_is_not_sent() -> None:
    body = event_body(events=[{"name": "callback_2125550199"}, {"name": "login"}])
    assert [e["name"] for e in sent(await process(body))["events"]] == ["login"]
    result = await process(event_body(events=[{"name": "callback_2125550199"}]))
    assert result.outcome.reason == "nothing_left" and result.outcome.outbound is None


@pytest.mark.parametrize(
    ("assertion", "reason"),
    [("granted", "granted"), ("GRANTED", "granted"), ("denied", "denied"), (None, "no_consent"),
     ("", "no_consent"), ("true", "no_consent")],
)
async def test_only_an_explicit_grant_forwards(assertion: str | None, reason: str) -> None:
    result = await process(event_body(analytics_consent=assertion))
    assert result.outcome.reason == reason
    assert (result.outcome.outbound is not None) is (reason == "granted")


async def test_the_trace_names_every_field_s_fate() -> None:
    body = event_body(user_id="u-1", user_location={"city": "x"}, ip_override="192.0.2.1",
                      user_data={}, device={"model": "Pixel"}, timestamp_micros=1)
    changes = {(c.param, c.action.value) for c in (await process(body)).outcome.changes}
    assert {("cid", "replaced"), ("user_id", "dropped"), ("user_location", "dropped"),
            ("user_data", "dropped"), ("ip_override", "replaced"), ("device.model", "dropped"),
            ("timestamp_micros", "dropped"), ("consent", "forced"),
            ("analytics_consent", "dropped")} <= changes
    assert "npa" not in {param for param, _ in changes}  # non_personalized_ads stands for it


async def test_the_pseudonym_is_the_beacons_one() -> None:
    """Same Pseudonymizer call as the pipeline's for /g/collect: (key, tid, cid)."""
    config = mp_config(None)
    pseudo = Pseudonymizer(MemoryState(), bits=32, rotation=86400)
    mp = MeasurementProtocol(config, Pipeline(config, pseudo), clock=time.time)
    result = await mp.process(TID, json.dumps(event_body()).encode())
    key = await pseudo.current()
    assert result.outcome.pseudonym == pseudo.pseudonym(key, TID, CLIENT_ID) != CLIENT_ID


@pytest.mark.parametrize(
    "body",
    [b"[]", b'"x"', b"\xff\xfe", json.dumps(event_body(user_id=5)).encode(),
     json.dumps(event_body(events=[{"name": "buy", "params": {"a": True}}])).encode(),
     json.dumps(event_body(user_properties={"ga_x": {"value": 1}})).encode(),
     json.dumps(event_body(events=[{"name": "buy", "params": {"items": [{"price": None}]}}]))
     .encode()],
    ids=["array", "string", "not-utf8", "user-id-number", "bool-param", "reserved-property",
         "null-item-field"],
)
def test_what_ga_refuses_is_refused_with_a_message(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse(body)
    assert caught.value.messages
    assert str(caught.value) == "invalid_request"  # never the input
