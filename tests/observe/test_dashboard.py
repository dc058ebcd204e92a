"""The dashboard on the admin port: the token gate, its JSON endpoints, and the page itself
in a real headless Chromium against a real ``serve`` process."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect, sync_playwright

from proxy.config import ConfigError, from_mapping
from proxy.ingest.cookies import MAX_COOKIE_HEADER
from proxy.observe import dashboard
from proxy.observe.dashboard import (
    AUDIT_LIMIT,
    CONTENT_SECURITY_POLICY,
    MAX_HAR_BEACONS,
    MAX_INPUT,
    describe_policy,
)
from proxy.observe.explain import BeaconInput, Explainer
from proxy.observe.metrics import Metrics
from proxy.server.admin import init_admin_app
from proxy.server.public import init_app
from tests.capture import Capture
from tests.conftest import GA4_HITS
from tests.redis_server import free_port
from tests.serve_process import ROOT, start_serve, wait_until_up

TOKEN = "t0ken-for:tests"  # a colon too: Basic auth splits on the first one only
UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/122.0.6261.69 Safari/537.36"
)
GRANTED = "analytics_consent=granted"
DENIED = "analytics_consent=denied"
CLIENT_IP = "81.2.69.160"
TIDS = sorted({h["url"].split("tid=")[1].split("&")[0] for h in GA4_HITS})
FORWARDABLE = [h for h in GA4_HITS if "gcs=G100" not in h["url"] and "G-XXXXX&" not in h["url"]]
Clients = Callable[..., Awaitable[Any]]


def config(**overrides: Any) -> Any:
    data: dict[str, Any] = {"measurement_ids": TIDS, "upstream": {"url": "stdout"}}
    data.update(overrides)
    return from_mapping(data, env={})


def basic(user: str, password: str) -> dict[str, str]:
    pair = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {pair}"}


BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def admin(aiohttp_client: Clients) -> TestClient:
    return await aiohttp_client(init_admin_app(config(admin={"token": TOKEN}), Metrics()))


async def explain(admin: TestClient, payload: Any) -> tuple[int, dict[str, Any]]:
    resp = await admin.post("/dashboard/api/explain", json=payload, headers=BEARER)
    return resp.status, await resp.json()


# The token gate ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/dashboard/", "/dashboard/api/summary", "/metrics", "/"])
async def test_without_credentials_a_browser_is_asked_to_log_in(
    admin: TestClient, path: str
) -> None:
    resp = await admin.get(path, allow_redirects=False)
    assert resp.status == 401
    challenges = resp.headers.getall("WWW-Authenticate")
    assert 'Basic realm="analytics-proxy"' in challenges
    assert "Beacons" not in await resp.text()


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Token {TOKEN}"},
        {"Authorization": TOKEN},
        basic("ops", "wrong"),
        basic(TOKEN, ""),  # the token as the user name is not the password
        basic("ops", TOKEN[:-1]),
        {"Authorization": "Basic not-base64!"},
        {"Authorization": "Basic " + base64.b64encode(TOKEN.encode()).decode()},  # no colon
        {"Authorization": "Basic"},
    ],
)
async def test_a_wrong_token_is_refused(admin: TestClient, headers: dict[str, str]) -> None:
    for path in ("/dashboard/", "/dashboard/api/summary", "/metrics"):
        assert (await admin.get(path, headers=headers)).status == 401


@pytest.mark.parametrize(
    "headers",
    [BEARER, {"Authorization": f"bearer  {TOKEN}"}, basic("ops", TOKEN), basic("", TOKEN)],
)
async def test_the_token_as_bearer_or_basic_password_opens_everything(
    admin: TestClient, headers: dict[str, str]
) -> None:
    page = await admin.get("/dashboard/", headers=headers)
    assert page.status == 200
    assert page.content_type == "text/html"
    assert 'id="try-title"' in await page.text()
    assert (await admin.get("/dashboard/api/summary", headers=headers)).status == 200
    assert (await admin.get("/metrics", headers=headers)).status == 200
    for path in ("/", "/dashboard"):
        moved = await admin.get(path, headers=headers, allow_redirects=False)
        assert (moved.status, moved.headers["Location"]) == (302, "/dashboard/")


async def test_without_a_token_loopback_is_open_to_loopback_names_only(
    aiohttp_client: Clients,
) -> None:
    open_admin = await aiohttp_client(init_admin_app(config(), Metrics()))
    assert (await open_admin.get("/dashboard/")).status == 200
    assert (await open_admin.get("/dashboard/", headers={"Host": "localhost:9090"})).status == 200
    # A page on another site whose name resolves to 127.0.0.1 (DNS rebinding) gets nothing.
    rebound = await open_admin.get("/dashboard/api/summary", headers={"Host": "evil.example"})
    assert rebound.status == 421
    assert "counts" not in await rebound.text()


async def test_with_a_token_any_host_name_works(admin: TestClient) -> None:
    headers = {**BEARER, "Host": "stats-admin.example.com"}
    assert (await admin.get("/dashboard/api/summary", headers=headers)).status == 200


def test_no_token_is_refused_on_a_non_loopback_admin_address() -> None:
    with pytest.raises(ConfigError, match=r"admin\.host"):
        config(admin={"host": "0.0.0.0"})
    with pytest.raises(ConfigError, match=r"admin\.host"):
        config(admin={"host": "192.0.2.10"})
    with pytest.raises(ConfigError, match=r"admin\.token"):
        config(admin={"host": "0.0.0.0", "token": ""})  # empty would have meant open
    assert config(admin={"host": "0.0.0.0", "token": TOKEN}).admin.token == TOKEN
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert config(admin={"host": host}).admin.token is None


def test_serve_refuses_to_start_an_open_admin_port_on_a_public_address(tmp_path: Path) -> None:
    path = tmp_path / "open.yaml"
    path.write_text(
        f"measurement_ids: [{TIDS[0]}]\nlisten: {{host: 127.0.0.1, port: 0}}\n"
        "admin: {host: 0.0.0.0, port: 0}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_PROXY_")}
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--config", str(path)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
    )
    assert done.returncode == 2
    assert "admin.host" in done.stderr


async def test_health_stays_public_on_the_public_port(aiohttp_client: Clients) -> None:
    public = await aiohttp_client(init_app(config(admin={"token": TOKEN}), Metrics()))
    assert (await public.get("/healthz")).status == 200
    assert (await public.get("/readyz")).status == 200
    assert (await public.get("/dashboard/")).status == 404  # the dashboard is admin only


# What is served ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/dashboard/", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
        ("/dashboard/favicon.svg", "image/svg+xml"),
        ("/favicon.ico", "image/svg+xml"),
        ("/dashboard/api/summary", "application/json"),
        ("/dashboard/api/policy", "application/json"),
    ],
)
async def test_every_response_carries_a_strict_policy(
    admin: TestClient, path: str, kind: str
) -> None:
    resp = await admin.get(path, headers=BEARER)
    assert resp.status == 200
    assert resp.content_type == kind
    csp = resp.headers["Content-Security-Policy"]
    assert csp == CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in csp and "unsafe" not in csp and "*" not in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Cache-Control"] == "no-store"


async def test_the_favicon_is_served_where_a_browser_looks_and_is_the_pages_icon(
    admin: TestClient,
) -> None:
    root = await admin.get("/favicon.ico", headers=BEARER)  # asked for by every browser tab
    linked = await admin.get("/dashboard/favicon.svg", headers=BEARER)  # the page's <link>
    assert root.status == linked.status == 200
    icon = await root.read()
    assert icon == await linked.read()
    assert icon.startswith(b"<svg ") and b"<script" not in icon and len(icon) < 1024
    html = (ROOT / "proxy" / "observe" / "dashboard" / "static" / "dashboard.html").read_text()
    assert '<link rel="icon" href="favicon.svg" type="image/svg+xml">' in html
    # Behind the token like the rest of the admin port.
    assert (await admin.get("/favicon.ico")).status == 401


def test_the_page_loads_nothing_from_elsewhere_and_writes_no_html() -> None:
    static = ROOT / "proxy" / "observe" / "dashboard" / "static"
    html = (static / "dashboard.html").read_text()
    js = (static / "dashboard.js").read_text()
    css = (static / "dashboard.css").read_text()
    for text in (html, js, css):
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
        assert "@import" not in text and "url(" not in text
    assert re.findall(r"https?://[^\s\"')]+", js) == ["http://www.w3.org/2000/svg"]
    assert "<script>" not in html and "<style" not in html and "style=" not in html
    assert not re.search(r"\son[a-z]+\s*=", html, re.IGNORECASE)  # no inline handlers
    # Values reach the page as text only.
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js
    assert "document.write" not in js and "eval(" not in js


# Counts, history and audit records -----------------------------------------------------


async def test_summary_counts_what_the_public_app_counted(
    aiohttp_client: Clients, aiohttp_server: Any
) -> None:
    capture = Capture()
    sink = await aiohttp_server(capture.app())
    cfg = config(admin={"token": TOKEN}, upstream={"url": str(sink.make_url("/g/collect"))})
    metrics = Metrics()
    public = await aiohttp_client(init_app(cfg, metrics))
    admin = await aiohttp_client(init_admin_app(cfg, metrics))
    hit = FORWARDABLE[0]
    target = "/g/collect?" + urlsplit(hit["url"]).query
    headers = {"User-Agent": UA, "X-Forwarded-For": CLIENT_IP}
    await public.post(target, headers={**headers, "Cookie": GRANTED})
    await public.post(target, headers=headers)  # no consent
    await public.post(target, headers={**headers, "User-Agent": "curl/8.5.0"})  # bot
    await public.post("/g/collect?v=2", headers=headers)  # malformed
    await capture.wait_for(1)
    summary: dict[str, Any] = {}
    for _ in range(100):  # forwarded counts once Google (the capture) has answered
        summary = await (await admin.get("/dashboard/api/summary", headers=BEARER)).json()
        if summary["counts"]["forwarded"]:
            break
        await asyncio.sleep(0.05)
    counts = summary["counts"]
    assert counts["received"] == 4
    assert counts["accepted"] == 1
    assert counts["forwarded"] == 1
    assert counts["dropped"] == 3
    assert counts["dropped_by_reason"] == {"no_consent": 1, "bot": 1, "malformed": 1}
    text = json.dumps(summary)
    cid = re.search(r"cid=([^&]+)", hit["url"]).group(1)  # type: ignore[union-attr]
    assert CLIENT_IP not in text and cid not in text


async def test_history_is_sampled_in_the_background(aiohttp_client: Clients) -> None:
    metrics = Metrics()
    # The dashboard alone (as mounted under /dashboard), sampling quickly.
    client = await aiohttp_client(dashboard.dashboard_app(config(), metrics, interval=0.02))
    first = (await (await client.get("/api/summary")).json())["history"]
    assert first["interval"] == 0.02
    assert len(first["samples"]) >= 1  # sampled at start-up: the chart has history on load
    metrics.received.inc(7)
    metrics.drop("gpc")
    samples: list[list[float]] = []
    for _ in range(500):  # bounded wait for the sampler to pick the counts up
        samples = (await (await client.get("/api/summary")).json())["history"]["samples"]
        if samples[-1][1] == 7:
            break
        await asyncio.sleep(0.02)
    assert samples[0][1:] == [0, 0, 0]
    assert samples[-1][1:] == [7, 0, 1]  # received, forwarded, dropped
    times = [s[0] for s in samples]
    assert times == sorted(times)


async def test_history_keeps_a_bounded_ring() -> None:
    dash = dashboard.Dashboard(config(), Metrics(), dashboard.no_audit)
    for _ in range(dashboard.HISTORY_SIZE + 50):
        dash.sample()
    assert len(dash._history) == dashboard.HISTORY_SIZE


async def test_recent_audit_records_come_from_the_provider(aiohttp_client: Clients) -> None:
    asked: list[int] = []
    records = [
        {"time": "2026-11-25T10:00", "tid": TIDS[0], "decision": "drop", "reason": "gpc"},
        {"time": "2026-11-25T10:00", "tid": TIDS[0], "decision": "forward", "reason": "granted",
         "params": [{"param": "cid", "action": "replaced"}]},
    ]

    async def recent(limit: int) -> list[dict[str, Any]]:
        asked.append(limit)
        return records

    admin = await aiohttp_client(init_admin_app(config(), Metrics(), recent_audit=recent))
    audit = (await (await admin.get("/dashboard/api/summary")).json())["audit"]
    assert audit == {"available": True, "records": records}
    assert asked == [AUDIT_LIMIT]


async def test_an_unavailable_audit_store_does_not_hide_the_counts(
    aiohttp_client: Clients,
) -> None:
    async def broken(limit: int) -> list[dict[str, Any]]:
        raise ConnectionError("redis down")

    admin = await aiohttp_client(init_admin_app(config(), Metrics(), recent_audit=broken))
    resp = await admin.get("/dashboard/api/summary")
    assert resp.status == 200
    summary = await resp.json()
    assert summary["audit"] == {"available": False, "records": []}
    assert summary["counts"]["received"] == 0


# The policy in plain words ---------------------------------------------------------------


def policy_text(**overrides: Any) -> str:
    return "\n".join(
        line for section in describe_policy(config(**overrides)) for line in section["lines"]
    )


def test_policy_follows_the_configuration() -> None:
    strict = policy_text()
    assert "Profile: strict." in strict
    assert "Dry run" in strict
    assert "keyed hash of 32 bits" in strict and "every 24h" in strict
    assert "IPv4 /24 and IPv6 /48 (203.0.113.57 → 203.0.113.0)" in strict
    assert "Sec-GPC: 1 drops the beacon, whatever" in strict
    assert re.search(r"Always removed: [^\n]*\bsr\b", strict)
    assert re.search(r"Always removed: [^\n]*\buid\b", strict)
    assert "Scrubbed (item): pr1 to pr200." in strict
    assert "npa is always set to 1." in strict
    assert "opt-in regions (EEA, GB, CH): drop" in strict

    balanced = policy_text(
        privacy={
            "profile": "balanced",
            "pseudonym": {"bits": 48, "rotation": "12h"},
            "location": {"mode": "omit"},
        },
        consent={"gpc": "ignore", "dnt": "ignore", "defaults": {"unknown": "forward"}},
        upstream={"url": "https://region1.google-analytics.com/g/collect", "retries": 2},
    )
    assert "Profile: balanced." in balanced
    assert "Generalised (screen_class): sr." in balanced
    assert not re.search(r"Always removed: [^\n]*\bsr\b", balanced)
    assert "keyed hash of 48 bits" in balanced and "every 12h" in balanced
    assert "none is sent (_uip omitted)" in balanced
    assert "Sec-GPC is ignored." in balanced and "DNT is ignored." in balanced
    assert "place unknown: forward" in balanced
    assert "Endpoint: https://region1.google-analytics.com/g/collect" in balanced
    assert "Retries: 2" in balanced and "Dry run" not in balanced


async def test_policy_endpoint_serves_the_description(admin: TestClient) -> None:
    body = await (await admin.get("/dashboard/api/policy", headers=BEARER)).json()
    assert body["sections"] == describe_policy(config(admin={"token": TOKEN}))


# Try a beacon ------------------------------------------------------------------------------


def actions(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(c["scope"], c["param"], c["action"]) for c in result["changes"]]


@pytest.mark.parametrize("hit", FORWARDABLE, ids=[h["id"] for h in FORWARDABLE])
async def test_explain_in_the_dashboard_is_explain(
    admin: TestClient, hit: dict[str, str]
) -> None:
    payload = {"url": hit["url"], "body": hit["body"], "method": hit["method"],
               "cookie": GRANTED, "client_ip": CLIENT_IP, "user_agent": UA}
    status, answer = await explain(admin, payload)
    assert status == 200
    assert (answer["total"], answer["shown"]) == (1, 1)
    (result,) = answer["results"]
    # The CLI's explainer on the same input decides the same, parameter by parameter (the
    # pseudonyms differ: each explainer has a salt of its own).
    reference = Explainer(config(admin={"token": TOKEN}))
    beacon = BeaconInput(url=hit["url"], method=hit["method"], body=hit["body"], cookie=GRANTED,
                         headers={"User-Agent": UA}, client_ip=CLIENT_IP)
    outcome = await reference.explain(beacon)
    expected = reference.to_json(outcome)
    assert result["decision"] == expected["decision"] == "forward"
    assert result["reason"] == expected["reason"] == "granted"
    assert actions(result) == actions(expected)
    assert ("query", "cid", "replaced") in actions(result)
    assert result["forwarded"]["url"].split("?")[0] == expected["forwarded"]["url"].split("?")[0]
    head = result["text"].splitlines()[0]
    assert head.startswith("FORWARD  granted by ")
    assert head == reference.to_text(outcome).splitlines()[0]


async def test_explain_without_consent_says_drop_and_why(admin: TestClient) -> None:
    status, answer = await explain(admin, {"url": FORWARDABLE[0]["url"], "user_agent": UA})
    assert status == 200
    (result,) = answer["results"]
    assert (result["decision"], result["reason"], result["forwarded"]) == (
        "drop", "no_consent", None)


async def test_explain_takes_a_bare_query_string(admin: TestClient) -> None:
    query = urlsplit(FORWARDABLE[0]["url"]).query
    status, answer = await explain(admin, {"url": query, "cookie": GRANTED})
    assert status == 200 and answer["results"][0]["decision"] == "forward"


@pytest.mark.parametrize(
    "cookie",
    [GRANTED + "; pad=" + "x" * MAX_COOKIE_HEADER, GRANTED + "; x=\udcff"],
    ids=["too large", "undecodable"],
)
async def test_an_unreadable_cookie_is_a_consent_error_as_in_serve(
    admin: TestClient, cookie: str
) -> None:
    # US is opt-out: without any cookie the regime default forwards; unread, never.
    beacon = {"url": FORWARDABLE[0]["url"], "user_agent": UA, "country": "US"}
    _, answer = await explain(admin, beacon)
    assert answer["results"][0]["reason"] == "default"
    status, answer = await explain(admin, {**beacon, "cookie": cookie})
    assert status == 200
    (result,) = answer["results"]
    assert (result["decision"], result["reason"]) == ("drop", "consent_error")
    assert "udcff" not in json.dumps(answer) and "xxxx" not in json.dumps(answer)


async def test_every_cookie_line_of_a_har_request_counts(admin: TestClient) -> None:
    har = json.loads(har_of([FORWARDABLE[0]], GRANTED))
    har["log"]["entries"][0]["request"]["headers"].append({"name": "cookie", "value": DENIED})
    status, answer = await explain(admin, {"har": json.dumps(har)})
    assert status == 200
    assert (answer["results"][0]["decision"], answer["results"][0]["reason"]) == (
        "drop", "denied")


def har_of(hits: list[dict[str, str]], cookie: str) -> str:
    entries = [
        {"request": {"method": h["method"], "url": h["url"],
                     "headers": [{"name": "Cookie", "value": cookie},
                                 {"name": "User-Agent", "value": UA},
                                 {"name": ":authority", "value": "x"}],
                     "postData": {"text": h["body"]}}}
        for h in hits
    ]
    entries.append({"request": {"method": "GET", "url": "https://www.example.com/app.js",
                                "headers": []}})
    return json.dumps({"log": {"entries": entries}})


async def test_explain_a_har_explains_each_collect_request(admin: TestClient) -> None:
    status, answer = await explain(admin, {"har": har_of(FORWARDABLE, GRANTED)})
    assert status == 200
    assert answer["total"] == answer["shown"] == len(FORWARDABLE)
    assert [r["decision"] for r in answer["results"]] == ["forward"] * len(FORWARDABLE)


async def test_a_har_is_taken_as_an_object_as_well_as_its_text(admin: TestClient) -> None:
    text = har_of(FORWARDABLE, GRANTED)
    as_text = await explain(admin, {"har": text})
    as_object = await explain(admin, {"har": json.loads(text)})  # what a script sends
    assert as_object == as_text
    assert as_object[0] == 200 and as_object[1]["shown"] == len(FORWARDABLE)


async def test_a_large_har_is_explained_in_part(admin: TestClient) -> None:
    hits = [FORWARDABLE[-1]] * (MAX_HAR_BEACONS + 5)
    status, answer = await explain(admin, {"har": har_of(hits, GRANTED)})
    assert status == 200
    assert (answer["total"], answer["shown"]) == (MAX_HAR_BEACONS + 5, MAX_HAR_BEACONS)


async def test_the_explainer_is_built_once(
    aiohttp_client: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Explainer] = []

    class Counting(Explainer):
        def __init__(self, cfg: Any) -> None:
            super().__init__(cfg)
            built.append(self)

    monkeypatch.setattr("proxy.observe.dashboard.app.Explainer", Counting)
    client = await aiohttp_client(init_admin_app(config(admin={"token": TOKEN}), Metrics()))
    assert len(built) == 1  # at start-up, before any request
    for hit in FORWARDABLE:
        status, _answer = await explain(client, {"url": hit["url"], "cookie": GRANTED})
        assert status == 200
    assert len(built) == 1


BAD_INPUTS = [
    ("not JSON", b"{'url': 1"),
    ("JSON array", b"[1, 2]"),
    ("nothing", b"{}"),
    ("empty url", b'{"url": "  "}'),
    ("url not text", b'{"url": 42}'),
    ("no query", b'{"url": "https://stats.example.com/g/collect"}'),
    ("bad ip", b'{"url": "/g/collect?v=2&tid=G-1", "client_ip": "203.0.113.999"}'),
    ("bad country", b'{"url": "/g/collect?v=2&tid=G-1", "country": "Germany"}'),
    ("bad method", b'{"url": "/g/collect?v=2&tid=G-1", "method": "DELETE"}'),
    ("lone surrogate", b'{"url": "/g/collect?v=2&tid=G-1", "body": "\\ud800"}'),
    ("har not JSON", b'{"har": "{not json"}'),
    ("har wrong shape", b'{"har": "{\\"log\\": 3}"}'),
    ("har entries wrong", b'{"har": "{\\"log\\": {\\"entries\\": [1, \\"x\\"]}}"}'),
    ("har url not text", b'{"har": "{\\"log\\": {\\"entries\\": [{\\"request\\": '
                         b'{\\"url\\": 5}}]}}"}'),
    ("har method not text", b'{"har": "{\\"log\\": {\\"entries\\": [{\\"request\\": {\\"url\\": '
                            b'\\"https://x.example/g/collect?v=2\\", \\"method\\": 7}}]}}"}'),
    ("har without beacons", b'{"har": "{\\"log\\": {\\"entries\\": []}}"}'),
    ("har object without beacons", b'{"har": {"log": {"entries": []}}}'),
    ("har object wrong shape", b'{"har": {"log": {"entries": [{"request": {"url": 5}}]}}}'),
    ("har neither text nor object", b'{"har": [{"log": {}}]}'),
    ("har a number", b'{"har": 5}'),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000),
    ("invalid utf-8", b'{"url": "\xff\xfe"}'),
]


@pytest.mark.parametrize(("name", "raw"), BAD_INPUTS, ids=[n for n, _ in BAD_INPUTS])
async def test_bad_input_is_a_clear_400(admin: TestClient, name: str, raw: bytes) -> None:
    resp = await admin.post(
        "/dashboard/api/explain", data=raw,
        headers={**BEARER, "Content-Type": "application/json"},
    )
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert len(error) > 10
    assert "Germany" not in error and "999" not in error  # the input is never echoed


async def test_oversized_and_non_json_input_are_refused(admin: TestClient) -> None:
    big = json.dumps({"url": "/g/collect?v=2&x=" + "a" * MAX_INPUT}).encode()
    resp = await admin.post("/dashboard/api/explain", data=big,
                            headers={**BEARER, "Content-Type": "application/json"})
    assert resp.status == 413
    assert "1 MiB" in (await resp.json())["error"]
    # A plain form (which another site could make a logged-in browser send) is refused.
    form = await admin.post("/dashboard/api/explain", data={"url": "/g/collect?v=2"},
                            headers=BEARER)
    assert form.status == 415


async def test_explain_logs_and_keeps_nothing_of_the_input(
    admin: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_mail = "jane.doe@example.com"
    url = (FORWARDABLE[0]["url"] + "&uid=" + secret_mail.replace("@", "%40")
           + "&dt=Order%20for%20" + secret_mail.replace("@", "%40"))
    status, answer = await explain(
        admin, {"url": url, "cookie": GRANTED + "; session=s3ss10n", "client_ip": CLIENT_IP})
    assert status == 200
    assert secret_mail in json.dumps(answer)  # shown to the operator who pasted it…
    bad_status, _ = await explain(admin, {"url": url, "client_ip": "not-an-ip-" + secret_mail})
    assert bad_status == 400
    summary = json.dumps(await (await admin.get("/dashboard/api/summary", headers=BEARER)).json())
    for value in (secret_mail, "s3ss10n", CLIENT_IP, "1141082648"):
        assert value not in caplog.text  # …but never logged
        assert value not in summary  # nor kept or counted anywhere the dashboard shows


def test_counts_add_up_across_workers(tmp_path: Path) -> None:
    proc, port, admin_port = start_serve(
        tmp_path, "workers",
        f"measurement_ids: [{', '.join(TIDS)}]\nupstream: {{url: stdout, shutdown_grace: 0}}\n",
        "--workers", "2",
    )
    no_signal = next(h for h in FORWARDABLE if h["id"] == "TV-01")
    beacons = 30
    try:
        wait_until_up(port)
        wait_until_up(admin_port, "/dashboard/api/summary")
        for _ in range(beacons):  # a new connection each: the kernel spreads them
            send_beacon(port, no_signal, {"User-Agent": UA})
        url = f"http://127.0.0.1:{admin_port}/dashboard/api/summary"
        with urllib.request.urlopen(url, timeout=10) as resp:
            counts = json.load(resp)["counts"]
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    assert counts["received"] == beacons
    assert counts["dropped_by_reason"] == {"no_consent": beacons}


# The page in a real browser ------------------------------------------------------------


def chromium_path() -> str:
    """Debian's chromium. Missing: a skip on a developer's machine, a failure in CI."""
    path = os.environ.get("ANALYTICS_PROXY_TEST_CHROMIUM") or shutil.which("chromium")
    if path is None:
        message = "no chromium on PATH (apt-get install chromium; .ci/run does it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


CHROMIUM_ARGS = [
    # This machine has no network but loopback: no background calls home.
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """A real ``serve`` process (dry run) with an admin token, on loopback ports."""
    proc, port, admin_port = start_serve(
        tmp_path, "dashboard", f"measurement_ids: [{', '.join(TIDS)}]\nupstream: {{url: stdout}}\n",
        admin_token=TOKEN,
    )
    try:
        wait_until_up(port)
        yield port, admin_port
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def send_beacon(port: int, hit: dict[str, str], headers: dict[str, str]) -> None:
    query = urlsplit(hit["url"]).query
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/g/collect?{query}", data=hit["body"].encode(), method="POST",
        headers={"Content-Type": "text/plain", **headers},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 204


def send_traffic(port: int, rounds: int) -> dict[str, int]:
    """Beacons from the captures: granted, without consent, and from a bot; the tally."""
    sent = {"received": 0, "dropped": 0}
    # TV-01 carries no Consent Mode grant: without a cookie it has no consent.
    no_signal = next(h for h in FORWARDABLE if h["id"] == "TV-01")
    for i in range(rounds):
        if i:
            time.sleep(dashboard.HISTORY_INTERVAL)  # a chart with history for the README
        for _ in range(1 + i % 3):
            for hit in FORWARDABLE:
                send_beacon(port, hit, {"User-Agent": UA, "Cookie": GRANTED})
            send_beacon(port, no_signal, {"User-Agent": UA})
            sent["received"] += len(FORWARDABLE) + 1
            sent["dropped"] += 1
        send_beacon(port, FORWARDABLE[0], {"User-Agent": "curl/8.5.0", "Cookie": GRANTED})
        sent["received"] += 1
        sent["dropped"] += 1
    return sent


def test_the_dashboard_in_a_real_browser(served: tuple[int, int], tmp_path: Path) -> None:
    executable = chromium_path()
    port, admin_port = served
    update = bool(os.environ.get("UPDATE_SCREENSHOT"))
    sent = send_traffic(port, rounds=10 if update else 1)
    url = f"http://127.0.0.1:{admin_port}/dashboard/"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            # No credentials: Chromium is challenged for a login it has none for.
            anonymous = browser.new_context()
            with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
                anonymous.new_page().goto(url)
            anonymous.close()
            # A wrong password: the 401 page, and nothing of the dashboard.
            wrong = browser.new_context(http_credentials={"username": "ops", "password": "x"})
            page = wrong.new_page()
            refused = page.goto(url)
            assert refused is not None and refused.status == 401
            challenges = [h["value"] for h in refused.headers_array()
                          if h["name"].lower() == "www-authenticate"]
            assert 'Basic realm="analytics-proxy"' in challenges
            assert "admin token is required" in page.content()
            assert page.locator("#counts").count() == 0
            wrong.close()

            context = browser.new_context(
                http_credentials={"username": "privacy-lead", "password": TOKEN},
                viewport={"width": 1280, "height": 900},
            )
            page = context.new_page()
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            loaded = page.goto(url)
            assert loaded is not None and loaded.status == 200
            expect(page.locator("#count-received")).to_have_text(str(sent["received"]))
            expect(page.locator("#count-dropped")).to_have_text(str(sent["dropped"]))
            expect(page.locator("#reasons")).to_contain_text("no_consent")
            expect(page.locator("#reasons")).to_contain_text("bot")
            expect(page.locator("#policy-sections")).to_contain_text("Profile: strict.")
            expect(page.locator("#status")).to_contain_text("updated")
            # The page's icon loads under the page's own strict policy (img-src 'self').
            icon_width = page.evaluate("""() => new Promise(done => {
                const icon = new Image();
                icon.onload = () => done(icon.naturalWidth);
                icon.onerror = () => done(-1);
                icon.src = document.querySelector('link[rel=icon]').href;
            })""")
            assert icon_width > 0

            # Markup inside a pasted value is shown as text, never run as HTML.
            hit = FORWARDABLE[1]
            page.fill("#beacon-url", hit["url"] + "&dt=%3Cimg%20src%3Dx%20id%3Dinjected%3E")
            page.fill("#beacon-cookie", GRANTED)
            page.click("#explain-button")
            expect(page.locator("#explain-results")).to_contain_text("<img src=x id=injected>")
            assert page.locator("#injected").count() == 0

            page.fill("#beacon-url", "https://stats.example.com/g/collect")
            page.click("#explain-button")
            expect(page.locator("#explain-error")).to_contain_text("no query")

            # A captured beacon, as the privacy lead would paste it.
            page.fill("#beacon-url", hit["url"])
            page.fill("#beacon-ip", CLIENT_IP)
            page.fill("#beacon-ua", UA)
            page.click("#explain-button")
            result = page.locator("#explain-results .result")
            expect(result).to_have_count(1)
            expect(result.locator(".decision")).to_have_text("FORWARD")
            expect(result.locator(".reason")).to_contain_text("granted by ")
            expect(result.locator("tr.action-replaced")).to_contain_text("cid")
            expect(page.locator("#explain-error")).to_be_hidden()

            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"dashboard screenshot: {shot}")
            if update:
                (ROOT / "docs").mkdir(exist_ok=True)
                shutil.copyfile(shot, ROOT / "docs" / "dashboard.png")
            assert not [m for m in console if "Content Security Policy" in m], console
        finally:
            browser.close()


@contextlib.contextmanager
def admin_in_thread(app: web.Application) -> Iterator[int]:
    """An in-process admin app on a loopback port, served from a thread of its own, for a
    page test that needs a provider no ``serve`` process has yet."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = web.AppRunner(app, access_log=None)
    port = free_port()

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def test_audit_records_show_in_the_page_as_text() -> None:
    from proxy.observe.audit import MemoryAuditTrail
    from proxy.pipeline import IncomingRequest, Pipeline
    from proxy.state.pseudonym import Pseudonymizer
    from proxy.state.salts import MemoryState

    executable = chromium_path()
    cfg = config(admin={"token": TOKEN})
    trail = MemoryAuditTrail(cfg, Metrics())
    pipeline = Pipeline(cfg, Pseudonymizer(MemoryState(), bits=32, rotation=86400))
    hit = next(h for h in GA4_HITS if h["id"] == "TV-04")
    query = urlsplit(hit["url"]).query

    async def record_two() -> None:
        # A real record of each kind: a sampled forwarded beacon, and a drop.
        granted = await pipeline.process(IncomingRequest(
            query=query, cookie="analytics_consent=granted", user_agent=UA), trace=True)
        assert granted.forward
        trail.observe(granted, query, sampled=True)
        denied = await pipeline.process(IncomingRequest(
            query=query, cookie="analytics_consent=denied", user_agent=UA))
        assert not denied.forward
        trail.observe(denied, query, sampled=False)

    asyncio.run(record_two())
    recent = trail.recent

    app = init_admin_app(config(admin={"token": TOKEN}), Metrics(), recent_audit=recent)
    with admin_in_thread(app) as port, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(http_credentials={"username": "", "password": TOKEN})
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{port}/dashboard/")
            rows = page.locator("#audit-table tbody tr")
            expect(rows).to_have_count(2)
            expect(rows.nth(0)).to_contain_text("forwarded")
            expect(rows.nth(0)).to_contain_text("granted by bridge")
            expect(rows.nth(0)).to_contain_text("cid: replaced pseudonym")
            expect(rows.nth(0)).to_contain_text("sct: dropped session_count")
            expect(rows.nth(1)).to_contain_text("dropped")
            expect(rows.nth(1)).to_contain_text("denied by bridge")
            expect(page.locator("#audit-empty")).to_be_hidden()
        finally:
            browser.close()
