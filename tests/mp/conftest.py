"""Shared parts of the Measurement Protocol tests: a loopback Google with both endpoints,
the proxy's credentials in the environment, and a back end's request."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from proxy.config import Config, from_mapping
from tests.capture import Capture

TID = "G-TEST1234"
TOKEN = "proxy-token-for-tests-0123456789"
SECRET = "googles-real-api-secret-4242"
CLIENT_ID = "1141082648.1693483972"
Clients = Callable[..., Awaitable[Any]]


@dataclass
class Google:
    """A loopback stand-in for Google: /g/collect and /mp/collect recorded apart."""

    beacons: Capture
    mp: Capture
    url: str  # scheme://host:port


@pytest.fixture
async def google(aiohttp_server: Any) -> Google:
    beacons, mp = Capture(), Capture()
    app = web.Application()
    app.router.add_post("/g/collect", beacons.handle)
    app.router.add_post("/mp/collect", mp.handle)
    server = await aiohttp_server(app)
    return Google(beacons, mp, str(server.make_url("")).rstrip("/"))


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANALYTICS_PROXY_MP_TOKEN_G_TEST1234", TOKEN)
    monkeypatch.setenv("ANALYTICS_PROXY_MP_API_SECRET_G_TEST1234", SECRET)


def mp_config(google: Google | None, **overrides: Any) -> Config:
    base = google.url if google is not None else "http://127.0.0.1:9"
    data: dict[str, Any] = {
        "measurement_ids": [TID],
        "allowed_origins": ["https://www.example.com"],
        "upstream": {"url": f"{base}/g/collect", "backoff_initial": 0.01, "backoff_max": 0.05},
        "measurement_protocol": {"upstream_url": f"{base}/mp/collect"},
        "rate_limit": {"per_network": 0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return from_mapping(data, env={})


def event_body(**fields: Any) -> dict[str, Any]:
    """A consented purchase as a back end sends it; ``fields`` replace or add top-level ones."""
    body: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "analytics_consent": "granted",
        "events": [{"name": "purchase", "params": {
            "currency": "EUR", "value": 42.5, "transaction_id": "T-1001",
            "session_id": 1715508000, "engagement_time_msec": 1200,
            "items": [{"item_id": "SKU-44120", "item_name": "Trail Runner 3", "price": 42.5,
                       "quantity": 1}],
        }}],
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def encoded(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()
