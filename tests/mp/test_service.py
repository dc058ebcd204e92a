"""Server-side events over real sockets: a back end posts to the real server on a loopback
port, which forwards to a loopback stand-in for Google. What arrives is read from outside."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import parse_qs, parse_qsl

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from proxy.config import from_mapping
from proxy.observe.audit import MemoryAuditTrail
from proxy.observe.metrics import Metrics
from proxy.server.public import init_app
from tests.mp.conftest import (
    CLIENT_ID,
    SECRET,
    TID,
    TOKEN,
    Clients,
    Google,
    auth,
    encoded,
    event_body,
    mp_config,
)

pytestmark = pytest.mark.usefixtures("credentials")

UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/122.0.6261.69 Safari/537.36"
)
COLLECT = f"/mp/collect?measurement_id={TID}"
PLANTED = {
    "user_id": "customer-zelmorva-88213",
    "user_location": {"city": "Quimperlé", "region_id": "FR-BRE", "country_id": "FR"},
    "ip_override": "198.51.100.77",
    "user_data": {"sha256_email_address": ["a" * 64]},
}


def outcomes(metrics: Metrics) -> dict[str, float]:
    text = metrics.exposition().decode()
    return {s.labels["outcome"]: s.value for f in text_string_to_metric_families(text)
            if f.name == "analytics_proxy_mp_requests" for s in f.samples
            if s.name.endswith("_total")}


@pytest.fixture
async def proxy(aiohttp_client: Clients, google: Google) -> TestClient:
    return await aiohttp_client(init_app(mp_config(google), Metrics()))


async def test_an_event_arrives_with_google_s_secret_and_nothing_personal(
    proxy: TestClient, google: Google
) -> None:
    body = event_body(**PLANTED, events=[{"name": "sign_up", "params": {
        "method": "mail to vornikke.dashwell@example.org", "page_title": "Welcome, "
        "vornikke.dashwell@example.org", "page_location":
        "https://www.example.com/welcome?email=vornikke.dashwell%40example.org"}}])
    resp = await proxy.post(COLLECT + "&api_secret=sent-by-mistake", data=encoded(body),
                            headers={**auth(), "User-Agent": UA, "X-Forwarded-For": "192.0.2.9",
                                     "Cookie": "session=s3cr3t"})
    assert resp.status == 204
    assert resp.headers["X-Analytics-Proxy-Outcome"] == "accepted"
    (hit,) = await google.mp.wait_for(1)
    # The id and Google's secret from the proxy's environment: nothing the back end sent.
    assert parse_qs(hit.query) == {"measurement_id": [TID], "api_secret": [SECRET]}
    assert hit.headers["Content-Type"] == "application/json"
    assert hit.headers["User-Agent"].startswith("analytics-proxy/")
    lower = {k.lower() for k in hit.headers}
    assert not lower & {"authorization", "cookie", "x-forwarded-for", "referer", "origin"}
    sent = json.loads(hit.body)
    text = json.dumps(sent, ensure_ascii=False) + hit.query + str(hit.headers)
    for needle in ("zelmorva", "88213", "vornikke", "dashwell", "Quimperl", "FR-BRE",
                   "198.51.100.77", "192.0.2", "aaaaaaaa", TOKEN, "sent-by-mistake", "s3cr3t"):
        assert needle not in text, needle
    assert sent["client_id"] != CLIENT_ID
    assert sent["ip_override"] == "198.51.100.0"  # the location mode's, for the visitor
    assert sent["non_personalized_ads"] is True
    assert sent["consent"] == {"ad_user_data": "DENIED", "ad_personalization": "DENIED"}
    assert not {"user_id", "user_location", "user_data", "analytics_consent"} & sent.keys()
    (event,) = sent["events"]
    assert event["name"] == "sign_up"
    assert event["params"]["page_location"] == "https://www.example.com/welcome"
    assert "method" not in event["params"]  # not allow-listed
    assert google.beacons.hits == []


async def test_without_consent_or_a_valid_token_nothing_leaves(
    aiohttp_client: Clients, google: Google
) -> None:
    metrics = Metrics()
    proxy = await aiohttp_client(init_app(mp_config(google), metrics))
    cases: list[tuple[str, dict[str, Any], dict[str, str], int]] = [
        (COLLECT, event_body(analytics_consent=None), auth(), 204),
        (COLLECT, event_body(analytics_consent="denied"), auth(), 204),
        (COLLECT, event_body(analytics_consent="yes"), auth(), 204),
        (COLLECT, event_body(consent={"ad_user_data": "GRANTED"}, analytics_consent=None),
         auth(), 204),
        (COLLECT, event_body(), auth("not-the-token-0123456789"), 401),
        (COLLECT, event_body(), {"Authorization": TOKEN}, 401),  # no Bearer scheme
        (COLLECT, event_body(), auth(TOKEN[:-1]), 401),
        (COLLECT + f"&api_secret={SECRET}", event_body(), {}, 401),  # Google's secret alone
        ("/mp/collect?measurement_id=G-OTHER999", event_body(), auth(), 403),
    ]
    for target, body, headers, status in cases:
        resp = await proxy.post(target, data=encoded(body), headers=headers)
        assert resp.status == status, (target, body, headers)
    # One good request afterwards: when it has arrived, the others had their chance.
    assert (await proxy.post(COLLECT, data=encoded(event_body()), headers=auth())).status == 204
    await google.mp.wait_for(1)
    await asyncio.sleep(0.05)
    assert len(google.mp.hits) == 1
    counted = outcomes(metrics)
    assert counted["no_consent"] == 3 and counted["denied"] == 1
    assert counted["bad_token"] == 4 and counted["unknown_tid"] == 1
    assert counted["accepted"] == 1


async def test_a_client_id_gets_the_pseudonym_its_browser_hits_get(
    aiohttp_client: Clients, google: Google, redis_url: str
) -> None:
    """Same salt (shared in Redis) and window: a visitor's browser and server events join
    up. The durable outbox carries both kinds through Redis to their own endpoints."""
    config = mp_config(google, state={"redis_url": redis_url, "durable_ack": True})
    proxy = await aiohttp_client(init_app(config, Metrics()))
    beacon = (f"/g/collect?v=2&tid={TID}&cid={CLIENT_ID}&en=page_view"
              "&dl=https%3A%2F%2Fwww.example.com%2F")
    resp = await proxy.post(beacon, headers={"Cookie": "analytics_consent=granted",
                                             "User-Agent": UA, "Origin": "https://www.example.com"})
    assert resp.status == 204
    for client_id in (CLIENT_ID, "999.111"):
        resp = await proxy.post(COLLECT, data=encoded(event_body(client_id=client_id)),
                                headers=auth())
        assert resp.status == 204
    (browser,) = await google.beacons.wait_for(1)
    server_events = await google.mp.wait_for(2)
    browser_cid = dict(parse_qsl(browser.query))["cid"]
    by_id = {json.loads(h.body)["events"][0]["params"]["session_id"]: h for h in server_events}
    assert len(by_id) == 1  # both carry the same session id: tell them apart by client_id
    pseudonyms = [json.loads(h.body)["client_id"] for h in server_events]
    assert browser_cid in pseudonyms
    assert len(set(pseudonyms)) == 2 and CLIENT_ID not in pseudonyms
    assert all(h.headers["Content-Type"] == "application/json" for h in server_events)
    assert browser.headers["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"client_id": "1.2", "analytics_consent": "granted"}, "events", "VALUE_REQUIRED"),
        (event_body(client_id=None), "client_id", "VALUE_REQUIRED"),
        (event_body(events=[{"name": "session_start"}]), "events[0].name", "NAME_RESERVED"),
        (event_body(events=[{"name": "a" * 41}]), "events[0].name", "NAME_INVALID"),
        (event_body(events=[{"name": "9lives"}]), "events[0].name", "NAME_INVALID"),
        (event_body(events=[{"name": "buy", "params": {"ga_x": 1}}]), "events[0].params.ga_x",
         "NAME_RESERVED"),
        (event_body(events=[{"name": "buy", "params": {"x": {"y": 1}}}]),
         "events[0].params.x", "VALUE_INVALID"),
        (event_body(events=[{"name": "buy"}] * 26), "events", "EXCEEDED_MAX_ENTITIES"),
        (event_body(user_properties={"plan": "pro"}), "user_properties.plan", "VALUE_INVALID"),
        (event_body(timestamp_micros="yesterday"), "timestamp_micros", "VALUE_INVALID"),
    ],
    ids=["no-events", "no-client-id", "reserved-name", "long-name", "digit-first",
         "reserved-param", "object-param", "26-events", "bare-user-property", "timestamp"],
)
async def test_a_body_breaking_ga_s_rules_is_a_400_naming_the_field(
    proxy: TestClient, google: Google, body: dict[str, Any], field: str, code: str
) -> None:
    resp = await proxy.post(COLLECT, data=encoded(body), headers=auth())
    assert resp.status == 400
    messages = (await resp.json())["validationMessages"]
    assert {"fieldPath": field, "validationCode": code} in [
        {"fieldPath": m["fieldPath"], "validationCode": m["validationCode"]} for m in messages]
    for path in ("/mp/collect", "/debug/mp/collect"):
        resp = await proxy.post(f"{path}?measurement_id={TID}", data=b"{not json",
                                headers=auth())
        assert resp.status in (200, 400)
        assert (await resp.json())["validationMessages"][0]["validationCode"] == "VALUE_INVALID"
    assert google.mp.hits == []


async def test_the_debug_endpoint_answers_itself_and_forwards_nothing(
    proxy: TestClient, google: Google
) -> None:
    resp = await proxy.post(f"/debug/mp/collect?measurement_id={TID}",
                            data=encoded(event_body()), headers=auth())
    assert resp.status == 200
    assert await resp.json() == {"validationMessages": []}
    resp = await proxy.post(f"/debug/mp/collect?measurement_id={TID}",
                            data=encoded(event_body(analytics_consent=None)), headers=auth())
    (message,) = (await resp.json())["validationMessages"]
    assert message["fieldPath"] == "analytics_consent"
    assert message["validationCode"] == "VALUE_REQUIRED"
    assert (await proxy.post(f"/debug/mp/collect?measurement_id={TID}",
                             data=encoded(event_body()))).status == 401
    await asyncio.sleep(0.1)
    assert google.mp.hits == [] and google.mp.attempts == 0


async def test_a_body_over_the_limit_is_refused_unread(
    aiohttp_client: Clients, google: Google
) -> None:
    metrics = Metrics()
    config = mp_config(google, measurement_protocol={"max_body": 2000})
    proxy = await aiohttp_client(init_app(config, metrics))
    big = event_body(events=[{"name": "buy", "params": {"note": "x" * 3000}}])
    resp = await proxy.post(COLLECT, data=encoded(big), headers=auth())
    assert resp.status == 413
    # Chunked, without a length: counted as it is read.
    async def chunks() -> Any:
        for _ in range(4):
            yield b" " * 800
    resp = await proxy.post(COLLECT, data=chunks(), headers=auth())
    assert resp.status == 413
    assert outcomes(metrics)["too_large"] == 2
    assert google.mp.attempts == 0


async def test_timestamps_outside_ga_s_window_are_dropped_the_event_kept(
    proxy: TestClient, google: Google
) -> None:
    now = int(time.time() * 1e6)
    for stamp in (now - 3_600_000_000, now - 80 * 3_600_000_000, now + 3_600_000_000):
        resp = await proxy.post(COLLECT, data=encoded(event_body(timestamp_micros=stamp)),
                                headers=auth())
        assert resp.status == 204
    hits = await google.mp.wait_for(3)
    stamps = [json.loads(h.body).get("timestamp_micros") for h in hits]
    assert stamps == [now - 3_600_000_000, None, None]
    assert all(json.loads(h.body)["events"] for h in hits)


async def test_the_audit_trail_records_codes_only(
    aiohttp_client: Clients, google: Google
) -> None:
    config = mp_config(google, audit={"sample": 1.0})
    metrics = Metrics()
    audit = MemoryAuditTrail(config, metrics)
    proxy = await aiohttp_client(init_app(config, metrics, audit=audit))
    body = event_body(**PLANTED, surprise_field_zelmorva="x")
    assert (await proxy.post(COLLECT, data=encoded(body), headers=auth())).status == 204
    body = event_body(analytics_consent=None, user_id="customer-zelmorva-88213")
    assert (await proxy.post(COLLECT, data=encoded(body), headers=auth())).status == 204
    assert (await proxy.post(COLLECT, data=encoded(body),
                             headers=auth("zelmorva-wrong-token-000"))).status == 401
    records = await audit.recent(10)
    assert [(r["decision"], r["reason"]) for r in records] == [
        ("forwarded", "granted"), ("dropped", "no_consent"), ("dropped", "bad_token")]
    assert {r["detail"] for r in records} == {"measurement_protocol"}
    assert all(r["tid"] == TID for r in records)
    names = {p["name"] for p in records[0]["params"]}
    assert {"user_id", "user_location", "ip_override", "cid", "(other)"} <= names
    text = json.dumps(records)
    for needle in ("zelmorva", "88213", "198.51.100", "Quimperl", CLIENT_ID):
        assert needle not in text, needle


async def test_a_dry_run_prints_the_request_without_the_secret(
    aiohttp_client: Clients, capsys: pytest.CaptureFixture[str]
) -> None:
    config = from_mapping({"measurement_ids": [TID], "upstream": {"url": "stdout"}}, env={})
    proxy = await aiohttp_client(init_app(config, Metrics()))
    assert (await proxy.post(COLLECT, data=encoded(event_body()), headers=auth())).status == 204
    for _ in range(100):
        out = capsys.readouterr().out
        if out:
            break
        await asyncio.sleep(0.02)
    line = json.loads(out.splitlines()[0])
    assert line["url"] == ("https://region1.google-analytics.com/mp/collect"
                           f"?measurement_id={TID}")
    assert json.loads(line["body"])["events"][0]["name"] == "purchase"
    assert SECRET not in out and TOKEN not in out


async def test_switched_off_the_routes_are_gone(aiohttp_client: Clients, google: Google) -> None:
    config = mp_config(google, measurement_protocol={"enabled": False})
    proxy = await aiohttp_client(init_app(config, Metrics()))
    for path in ("/mp/collect", "/debug/mp/collect"):
        resp = await proxy.post(f"{path}?measurement_id={TID}", data=encoded(event_body()),
                                headers=auth())
        assert resp.status == 404
    assert google.mp.attempts == 0
