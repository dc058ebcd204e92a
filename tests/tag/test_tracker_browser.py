"""The proxy's own tracker, ``/t.js``, in a real headless Chromium with a real consent manager
(vanilla-cookieconsent from npm), against the same page run with Google's real gtag.js.

The servers are those of ``tests/tag/test_tag_browser.py``: the proxy on 127.0.0.1:80 with the
shipped configuration, a Capture server as Google, the site on a port of its own, and a trap
forward proxy as Chromium's only way off loopback. The page (``tests/browser/spa.html``) is
the same for both scripts but for its one ``<script src>``, and the site's own ``gtag()``
calls are left as written for gtag.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from unittest.mock import ANY
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from playwright.sync_api import Browser

from tests.tag.test_tag_browser import (
    ACCEPT,
    EVENT_PARAMS,
    MEASUREMENT_ID,
    REJECT,
    WAIT,
    Loopback,
    Site,
    Trap,
    Visitor,
    assert_only_site_and_proxy_contacted,
    forwarded_events,
    new_visitor,
    running_site,
    total,
)
from tests.tag.test_tag_browser import browser as browser  # the module-scoped fixtures
from tests.tag.test_tag_browser import loopback as loopback
from tests.tag.test_tag_browser import trap as trap

# What the scenario's events carry that the site wants in its reports.
TRACKER_EVENT_PARAMS = [*EVENT_PARAMS, "link_url", "file_extension", "file_name", "link_text",
                        "transaction_id", "value"]
STORAGE_KEY = f"_ap_{MEASUREMENT_ID}"
SCENARIO_EVENTS = {"page_view", "scroll", "purchase", "file_download", "click", "user_engagement"}


@pytest.fixture
def site(loopback: Loopback, trap: Trap, tmp_path: Path) -> Iterator[Site]:
    with running_site(loopback, trap, tmp_path, TRACKER_EVENT_PARAMS) as site:
        yield site


@pytest.fixture
def visitor(browser: Browser, site: Site) -> Iterator[Visitor]:
    with new_visitor(browser) as visitor:
        yield visitor


def page_url(site: Site, tag: str) -> str:
    return site.url(f"spa.html?tag={tag}")


def stored(visitor: Visitor) -> dict[str, object]:
    """What the page's origin keeps in the browser: cookies and localStorage."""
    local = visitor.page.evaluate(
        "() => Object.fromEntries(Object.keys(localStorage).map(k => [k, localStorage[k]]))")
    cookies = {c["name"]: c["value"] for c in visitor.context.cookies()}
    return {"localStorage": local, "cookies": cookies}


def act(visitor: Visitor) -> None:
    """The visitor's actions after the banner: scroll to the end, a page change in the single
    page app, a purchase (the site's own gtag call), a download, then an outbound link."""
    page = visitor.page
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_timeout(300)
    page.click("#next")
    page.wait_for_timeout(300)
    page.click("#buy")
    with page.expect_download():
        page.click("#download")
    page.click("#outbound")  # the page is hidden and unloads: user_engagement
    page.wait_for_url("**/elsewhere")


def run_scenario(visitor: Visitor, site: Site, tag: str, choice: str) -> None:
    page = visitor.page
    page.goto(page_url(site, tag))
    page.get_by_role("button", name=choice, exact=True).first.click()
    page.wait_for_function("CookieConsent.validConsent()")
    act(visitor)


def event_shapes(events: list[dict[str, str]]) -> dict[str, set[str]]:
    """Event name -> every parameter name its forwarded hits carried."""
    shapes: dict[str, set[str]] = {}
    for event in events:
        shapes.setdefault(event["en"], set()).update(event)
    return shapes


def wait_until_decided(site: Site, sent: int) -> dict[str, float]:
    """The proxy's counters once it has decided on every one of ``sent`` hits."""
    deadline = time.monotonic() + WAIT
    while True:
        metrics = site.proxy.metrics()
        received = total(metrics, "analytics_proxy_beacons_received_total")
        decided = total(metrics, "analytics_proxy_beacons_dropped_total") + total(
            metrics, "analytics_proxy_beacons_accepted_total")
        if received >= sent and decided == received:
            return metrics
        assert time.monotonic() < deadline, f"the proxy did not decide on {sent} hits: {metrics}"
        time.sleep(0.1)


# What gtag sends that the tracker does not, all after the proxy: the tag's build and experiment
# ids, its consent-defaults bitfield and DMA flags, timing and internal flags, and the
# conversion flag (GA4 marks key events by name, in its admin). The README lists them.
GTAG_ONLY = {"gtm", "tag_exp", "gcd", "dma", "dma_cps", "pscdl", "frm", "tfd", "_tu", "_eu",
             "_ee", "_nsi", "_c"}
# What the tracker sends that gtag did not: the previous page as referrer of a history change.
TRACKER_ONLY = {"dr"}
# Events the tracker measures that this gtag container did not send in the scenario: a page
# view on a history change is a GA4 admin setting there, always on here; gtag's
# user_engagement on hide is timing-dependent.
TRACKER_ONLY_EVENTS = {"user_engagement"}


def test_an_accepted_visit_with_the_tracker_reaches_google_sanitised(
    browser: Browser, visitor: Visitor, site: Site
) -> None:
    page = visitor.page
    page.goto(page_url(site, "tracker"))
    page.wait_for_function("() => window.dataLayer && dataLayer.push !== Array.prototype.push")
    assert stored(visitor) == {"localStorage": {}, "cookies": {}}
    page.get_by_role("button", name=ACCEPT, exact=True).first.click()
    page.wait_for_function("CookieConsent.validConsent()")
    page.wait_for_function(f"() => localStorage.getItem({STORAGE_KEY!r}) !== null")
    kept = stored(visitor)
    browser_cid = json.loads(kept["localStorage"][STORAGE_KEY])["c"]  # type: ignore[index]
    assert set(kept["cookies"]) == {"cc_cookie"}  # the consent manager's: none of ours
    act(visitor)
    events = site.wait_for_events(SCENARIO_EVENTS)
    names = [e["en"] for e in events]
    assert set(names) >= SCENARIO_EVENTS, names
    assert_only_site_and_proxy_contacted(visitor, site, tracker=True)

    # The landing page's page_view, held until the visitor chose, and the history change's.
    views = [e for e in events if e["en"] == "page_view"]
    assert [urlsplit(v["dl"]).path for v in views] == ["/spa.html", "/spa/second"]
    assert views[1]["dt"] == "Second page"
    assert urlsplit(views[1]["dr"]).path == "/spa.html"
    by_name = {e["en"]: e for e in events}
    assert by_name["scroll"]["epn.percent_scrolled"] == "90"
    assert by_name["click"]["ep.link_domain"] == "localhost"
    assert by_name["click"]["ep.outbound"] == "true"
    assert by_name["file_download"]["ep.file_extension"] == "pdf"
    assert by_name["file_download"]["ep.file_name"] == "/files/brochure.pdf"
    purchase = by_name["purchase"]
    assert (purchase["ep.transaction_id"], purchase["epn.value"], purchase["cu"]) == (
        "T-1001", "25.5", "GBP")
    assert purchase["pr1"] == "idSKU-1~nmPoster~pr25.5~qt1"
    assert int(by_name["user_engagement"]["_et"]) > 0

    major = browser.version.split(".")[0]
    for hit in site.capture.hits:
        sent = unquote(hit.query + hit.body)
        assert browser_cid not in sent and browser_cid.split(".")[0] not in sent
        assert "visitor@example.com" not in sent  # in the landing page's title
        assert "Cookie" not in hit.headers
        assert f"Chrome/{major}." in hit.headers["User-Agent"]
        assert browser.version not in sent + hit.headers["User-Agent"]
    for event in events:
        assert event["cid"] and event["cid"] != browser_cid
        assert event["_uip"] == "127.0.0.0"
    # The script sent what the strict profile forwards, nothing it would drop.
    for url in visitor.collects():
        keys = set(parse_qs(urlsplit(url).query))
        assert not keys & {"sct", "sr", "uid", "_ga", "ecid"}, keys
    metrics = site.proxy.metrics()
    assert total(metrics, "analytics_proxy_beacons_dropped_total") == 0, metrics


def test_before_consent_and_after_refusal_nothing_is_sent_or_stored(
    visitor: Visitor, site: Site
) -> None:
    page = visitor.page
    page.goto(page_url(site, "tracker"))
    page.wait_for_function("() => window.dataLayer && dataLayer.push !== Array.prototype.push")
    # Undecided: the visitor scrolls, changes page and buys before answering the banner.
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.click("#next")
    page.click("#buy")
    page.wait_for_timeout(1500)  # longer than the tracker's batching delay
    assert visitor.collects() == []
    assert stored(visitor) == {"localStorage": {}, "cookies": {}}

    page.get_by_role("button", name=REJECT, exact=True).first.click()
    page.wait_for_function("CookieConsent.validConsent()")
    page.evaluate("window.scrollTo(0, 0)")
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    with page.expect_download():
        page.click("#download")
    page.wait_for_timeout(1500)
    assert stored(visitor) == {"localStorage": {}, "cookies": {"cc_cookie": ANY}}
    page.click("#outbound")
    page.wait_for_url("**/elsewhere")
    page.wait_for_timeout(1000)  # whatever the page sent on unload has arrived

    assert visitor.collects() == []
    metrics = wait_until_decided(site, 0)
    assert total(metrics, "analytics_proxy_beacons_received_total") == 0
    assert site.capture.hits == []
    assert_only_site_and_proxy_contacted(visitor, site, tracker=True, sent=False)


def test_withdrawn_consent_removes_the_id_and_stops_the_hits(
    visitor: Visitor, site: Site
) -> None:
    page = visitor.page
    page.goto(page_url(site, "tracker"))
    page.get_by_role("button", name=ACCEPT, exact=True).first.click()
    site.wait_for_events({"page_view"})
    assert STORAGE_KEY in stored(visitor)["localStorage"]  # type: ignore[operator]
    # The visitor reopens the preferences and refuses statistics.
    page.evaluate("CookieConsent.acceptCategory([])")
    page.wait_for_function(f"() => localStorage.getItem({STORAGE_KEY!r}) === null")
    sent = len(visitor.collects())
    page.click("#buy")
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.click("#outbound")
    page.wait_for_url("**/elsewhere")
    page.wait_for_timeout(1000)
    assert len(visitor.collects()) == sent
    assert {e["en"] for e in forwarded_events(list(site.capture.hits))} == {"page_view"}


def test_gtag_and_the_tracker_forward_the_same_events_and_parameters(
    browser: Browser, site: Site
) -> None:
    shapes = {}
    for tag in ("gtag", "tracker"):
        before = len(site.capture.hits)
        with new_visitor(browser) as visitor:
            run_scenario(visitor, site, tag, ACCEPT)
            expected = SCENARIO_EVENTS - TRACKER_ONLY_EVENTS if tag == "gtag" else SCENARIO_EVENTS
            site.wait_for_events(expected)
            time.sleep(1)  # any late hit of this visit
            assert_only_site_and_proxy_contacted(visitor, site, tracker=tag == "tracker")
        shapes[tag] = event_shapes(forwarded_events(list(site.capture.hits)[before:]))
    gtag, tracker = shapes["gtag"], shapes["tracker"]
    assert set(gtag) <= set(tracker), (set(gtag), set(tracker))
    assert set(tracker) - set(gtag) <= TRACKER_ONLY_EVENTS, set(tracker) - set(gtag)
    for name in gtag:
        assert gtag[name] - tracker[name] <= GTAG_ONLY, (name, gtag[name] - tracker[name])
        assert tracker[name] - gtag[name] <= TRACKER_ONLY, (name, tracker[name] - gtag[name])
