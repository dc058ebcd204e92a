"""The privacy corpus (``tests/fixtures/privacy-planted.jsonl``) planted in Measurement
Protocol requests: each value in the field that corresponds to its beacon slot, and also as
the ``user_id`` and the ``user_location`` city; free-text values as a user property too
(not URLs: the beacons' ``up.`` rule, which user properties share, has no URL treatment).
Through the real server to a loopback Google, in both profiles; the forwarded JSON is judged
by ``tests/oracle.py``, which never calls the proxy's detectors."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from proxy.mp.fields import EVENT_PARAMS, ITEM_FIELDS
from proxy.observe.metrics import Metrics
from proxy.server.public import init_app
from tests.conftest import load_jsonl
from tests.mp.conftest import TID, Clients, Google, auth, encoded, event_body, mp_config
from tests.oracle import found_needles
from tests.test_privacy_corpus import EVENT_PARAMS as ALLOWED_PARAMS

pytestmark = pytest.mark.usefixtures("credentials")

PLANTED = load_jsonl("privacy-planted.jsonl")
ORIGIN = "https://www.example.com"
WEB_PARAMS = {slot: name for name, slot in EVENT_PARAMS.items()}
ITEM_NAMES = {key: name for name, key in ITEM_FIELDS.items()}
NUMBER = re.compile(r"-?\d+(\.\d+)?")
# Beacon slots the Measurement Protocol has no field for (gtag's technical parameters, the
# campaign fields, the host name): nothing to plant.
NO_COUNTERPART = {"gtm", "_p", "tag_exp", "_z", "_eu", "_tu", "gaf", "dh", "cn", "cs", "cm",
                  "ck", "cc"}


def number_or_text(value: str) -> Any:
    if NUMBER.fullmatch(value):
        return float(value) if "." in value else int(value)
    return value


def planted_body(entry: dict[str, Any]) -> dict[str, Any] | None:
    family, value = entry["family"], entry["value"]
    event: dict[str, Any] = {"name": "view_item", "params": {
        "page_location": f"{ORIGIN}/shop/", "items": [{"item_id": "SKU-44120"}]}}
    params, item = event["params"], event["params"]["items"][0]
    if family in NO_COUNTERPART:
        return None
    if family.startswith("pr1."):
        keys = family.removeprefix("pr1.").split("~")
        if len(keys) == 2:  # one value split over two fields, as written in the corpus
            first, _, second = value.partition(f"~{keys[1]}")
            item[ITEM_NAMES[keys[0]]], item[ITEM_NAMES[keys[1]]] = first, second
        else:
            name = ITEM_NAMES[keys[0]]
            item[name] = number_or_text(value) if keys[0] in ("pr", "qt", "ds") else value
    elif family.startswith(("ep.", "epn.")):
        name = family.split(".", 1)[1]
        params[name] = number_or_text(value) if family.startswith("epn.") else value
    elif family in ("dl path", "dl query", "dl host"):
        params["page_location"] = value
    elif family == "dp":
        params["page_location"] = ORIGIN + value
    elif family in ("sid", "_et"):
        params[WEB_PARAMS[family]] = number_or_text(value)
    elif family in WEB_PARAMS:
        params[WEB_PARAMS[family]] = value
    elif family == "en":
        event["name"] = value
    elif family == "param name":
        params[value] = 1
    elif family == "ul":
        return event_body(events=[event], device={"language": value})
    else:
        raise AssertionError(f"no Measurement Protocol field for {family!r}")
    body = event_body(events=[event], user_id=value, user_location={"city": value})
    if family == "dt" or (family.startswith("ep.") and "://" not in value):
        # Free text, as a user property holds: what the beacons' up.<name> rule is for.
        body["user_properties"] = {"plan": {"value": value}}
    return body


@pytest.mark.parametrize("profile", ["strict", "balanced"])
async def test_no_planted_value_reaches_google(
    aiohttp_client: Clients, google: Google, profile: str
) -> None:
    config = mp_config(google, privacy={"profile": profile, "event_params": ALLOWED_PARAMS,
                                        "user_properties": ["plan"]})
    proxy = await aiohttp_client(init_app(config, Metrics()))
    leaks, forwarded, planted = [], 0, 0
    for entry in PLANTED:
        body = planted_body(entry)
        if body is None:
            continue
        planted += 1
        resp = await proxy.post(f"/mp/collect?measurement_id={TID}", data=encoded(body),
                                headers=auth())
        assert resp.status in (204, 400), entry["id"]
        if resp.headers["X-Analytics-Proxy-Outcome"] != "accepted":
            continue
        forwarded += 1
        hit = (await google.mp.wait_for(forwarded))[-1]
        sent = json.dumps(json.loads(hit.body), ensure_ascii=False) + hit.query
        found = found_needles(sent, entry["needles"])
        if found:
            leaks.append((entry["id"], found))
    assert not leaks, leaks
    # Most requests carry ordinary values besides the planted one and are forwarded: the
    # test looks at what actually left, not at an empty outbox.
    assert planted > 250 and forwarded > planted * 0.8, (planted, forwarded)
