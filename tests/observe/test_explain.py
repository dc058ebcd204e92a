"""``explain``'s inputs read cookies the way ``serve`` does: every Cookie line, and a header
it will not read is a ``consent_error`` drop, never "no cookie"."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from proxy.config import from_mapping
from proxy.ingest.cookies import MAX_COOKIE_HEADER
from proxy.observe.explain import BeaconInput, Explainer, har_beacons
from tests.conftest import GA4_HITS

GRANTED = "analytics_consent=granted"
DENIED = "analytics_consent=denied"
HIT = next(h for h in GA4_HITS if h["id"] == "TV-04")  # no consent parameters of its own
TIDS = sorted({h["url"].split("tid=")[1].split("&")[0] for h in GA4_HITS} - {"G-XXXXX"})
UA = "Mozilla/5.0 (X11; Linux x86_64; rv:123.0) Gecko/20100101 Firefox/123.0"


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    return Explainer(from_mapping({"measurement_ids": TIDS, "upstream": {"url": "stdout"}}, env={}))


async def decide(explainer: Explainer, beacon: BeaconInput) -> tuple[str, str]:
    result = explainer.to_json(await explainer.explain(beacon))
    return result["decision"], result["reason"]


def beacon(**kwargs: Any) -> BeaconInput:
    kwargs.setdefault("headers", {"User-Agent": UA})
    return BeaconInput(url=HIT["url"], method=HIT["method"], body=HIT["body"], **kwargs)


@pytest.mark.parametrize(
    "cookie",
    [GRANTED + "; pad=" + "x" * MAX_COOKIE_HEADER, GRANTED + "; x=\udcff"],
    ids=["too large", "undecodable"],
)
async def test_an_unreadable_cookie_is_a_consent_error_where_no_cookie_would_forward(
    explainer: Explainer, cookie: str
) -> None:
    # US: opt-out, whose default forwards a beacon without any cookie.
    assert await decide(explainer, beacon(country="US")) == ("forward", "default")
    assert await decide(explainer, beacon(country="US", cookie=cookie)) == (
        "drop", "consent_error")
    headers = {"User-Agent": UA, "Cookie": cookie}
    assert await decide(explainer, beacon(country="US", headers=headers)) == (
        "drop", "consent_error")


async def test_the_cookie_field_and_a_cookie_header_are_both_read(explainer: Explainer) -> None:
    both = beacon(cookie=GRANTED, headers={"User-Agent": UA, "Cookie": DENIED})
    assert await decide(explainer, both) == ("drop", "denied")
    assert await decide(explainer, beacon(cookie=GRANTED)) == ("forward", "granted")


def har(*cookie_lines: str) -> dict[str, Any]:
    headers = [{"name": "Cookie", "value": line} for line in cookie_lines]
    headers.append({"name": "User-Agent", "value": UA})
    request = {"method": HIT["method"], "url": HIT["url"], "headers": headers,
               "postData": {"text": HIT["body"]}}
    return {"log": {"entries": [{"request": request}]}}


async def test_every_cookie_line_of_a_har_request_is_read(explainer: Explainer) -> None:
    (only_granted,) = har_beacons(har(GRANTED))
    assert await decide(explainer, only_granted) == ("forward", "granted")
    for lines in ((GRANTED, DENIED), (DENIED, GRANTED)):
        (both,) = har_beacons(har(*lines))
        assert both.cookie == "; ".join(lines)
        assert await decide(explainer, both) == ("drop", "denied")


@pytest.mark.parametrize(
    "url",
    [
        "https://stats.example.com/ccm/collect?tid=G-1&en=page_view",
        "https://stats.example.com/ads/ga-audiences?v=1&t=sr&tid=G-1",
        "https://www.google.com/measurement/conversion/?random=1",
        "https://stats.example.com/g/s/collect?v=2&_gsid=abc",
    ],
)
async def test_advertising_endpoints_are_explained_as_serve_answers_them(
    explainer: Explainer, url: str
) -> None:
    # Consent granted: even so, nothing of an advertising endpoint is forwarded.
    result = explainer.to_json(await explainer.explain(BeaconInput(url=url, cookie=GRANTED)))
    assert (result["decision"], result["reason"], result["forwarded"]) == (
        "drop", "ads_endpoint", None)


def test_a_har_lists_advertising_requests_beside_the_beacons() -> None:
    entries = har(GRANTED)["log"]["entries"]
    entries.append({"request": {"method": "GET", "url": "https://stats.example.com/td?id=G-1",
                                "headers": []}})
    entries.append({"request": {"method": "GET", "url": "https://www.example.com/index.html",
                                "headers": []}})
    urls = [b.url for b in har_beacons({"log": {"entries": entries}})]
    assert urls == [HIT["url"], "https://stats.example.com/td?id=G-1"]


@pytest.mark.parametrize(
    ("client_ip", "headers", "sent"),
    [
        pytest.param("81.2.69.160", {}, "81.2.69.0", id="the given address, as the peer"),
        pytest.param("81.2.69.160", {"X-Forwarded-For": "198.51.100.9"}, "81.2.69.0",
                     id="an untrusted peer's header is not read"),
        pytest.param("127.0.0.1", {"X-Forwarded-For": "198.51.100.9, 81.2.69.160"}, "81.2.69.0",
                     id="behind a trusted proxy: the right-most untrusted hop"),
        pytest.param("127.0.0.1", {"X-Forwarded-For": "81.2.69.160, unknown"}, None,
                     id="an unreadable hop: no address"),
    ],
)
async def test_explain_resolves_the_address_as_serve_does(
    explainer: Explainer, client_ip: str, headers: dict[str, str], sent: str | None
) -> None:
    given = beacon(client_ip=client_ip, cookie=GRANTED, headers={"User-Agent": UA, **headers})
    result = explainer.to_json(await explainer.explain(given))
    assert result["decision"] == "forward"
    assert dict(parse_qsl(urlsplit(result["forwarded"]["url"]).query)).get("_uip") == sent
