"""Google's real gtag.js, served by a real ``serve`` process, in a real headless Chromium with a
real consent manager (vanilla-cookieconsent from npm): what reaches Google when the visitor
accepts, that nothing does when they refuse, and that the page talks to the site and the
proxy alone.

Everything is on loopback: a stand-in for Google's tag server serving the captured gtag.js, a
Capture server as Google's collection endpoint, the site's pages, and the proxy on
127.0.0.1:80 (gtag drops the port of ``server_container_url``). Chromium's only way off
loopback is a recording forward proxy that lets nothing through: Playwright does not report
the beacons a page sends while it unloads, that proxy does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml
from aiohttp import web
from playwright.sync_api import Browser, BrowserContext, Page, Route, sync_playwright
from playwright.sync_api import Request as BrowserRequest
from playwright.sync_api import Response as BrowserResponse
from prometheus_client.parser import text_string_to_metric_families

from tests.capture import Capture, Hit
from tests.observe.test_dashboard import CHROMIUM_ARGS, chromium_path
from tests.redis_server import free_port
from tests.serve_process import ROOT
from tests.tag.gtag import GTAG_ID, gtag_js

T = TypeVar("T")
LowLevelHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

MEASUREMENT_ID = GTAG_ID  # the captured tag's own: any other id, and it asks Google for it
PAGES = Path(__file__).parents[1] / "browser"
CMP = PAGES / "node_modules" / "vanilla-cookieconsent" / "dist"
PROXY_PORT = 80  # gtag sends to server_container_url's protocol//hostname, port dropped
PUBLIC_URL = "http://127.0.0.1"
ACCEPT, REJECT = "Accept all", "Reject all"  # the banner's buttons (tests/browser/consent.js)
WAIT = 10.0  # seconds: a liveness bound on anything the browser or the proxy does
# Where Chromium itself would call Google (component updates, account checks): a dead
# loopback port, so that whatever reaches the trap proxy is the page's.
QUIET_CHROMIUM = [
    "--component-updater=url-source=http://127.0.0.1:9/",
    "--gaia-url=http://127.0.0.1:9/",
]
# What gtag sends that identifies the visitor or the browser build, and the README says the
# proxy drops (strict profile): server-side-tagging ids, client hints, screen, session count.
IDENTIFYING = {"ecid", "_fplc", "ur", "richsstsse", "_uc", "sr", "sct"} | {
    "uaa", "uab", "uafvl", "uamb", "uam", "uap", "uapv", "uaw",
    "ep.ga_temp_client_id", "ep.ga_temp_ecid",
}


def consent_manager() -> Path:
    if not (CMP / "cookieconsent.umd.js").is_file():
        message = "no vanilla-cookieconsent: npm ci --prefix tests/browser (make test runs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CMP


# Loopback servers, run by an event loop of their own while the test drives the browser ----


class Loopback:
    """aiohttp servers on loopback ports, served from a thread of their own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def start(self, app: web.Application | LowLevelHandler) -> tuple[web.BaseRunner, int]:
        """An application, or a handler for every request whatever its target (CONNECT)."""
        port = free_port()

        async def start() -> web.BaseRunner:
            runner: web.BaseRunner = (
                web.AppRunner(app, access_log=None) if isinstance(app, web.Application)
                else web.ServerRunner(web.Server(app))
            )
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            return runner

        return self.run(start()), port

    def stop(self, runner: web.BaseRunner) -> None:
        self.run(runner.cleanup())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@dataclass
class TagOrigin:
    """Google's tag server: the captured gtag.js for its measurement id, and who asked."""

    script: bytes
    requests: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append({"query": request.query_string, **request.headers})
        if request.query.get("id") != MEASUREMENT_ID:
            return web.Response(status=404)
        return web.Response(body=self.script, content_type="application/javascript")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/gtag/js", self.handle)
        return app


def site_app() -> web.Application:
    """The site: its two pages, the consent manager's files, and a page a link leads to."""
    async def elsewhere(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>Elsewhere</title>",
                            content_type="text/html")

    def file(name: str) -> Callable[[web.Request], Coroutine[Any, Any, web.FileResponse]]:
        async def handler(request: web.Request) -> web.FileResponse:
            return web.FileResponse(PAGES / name)
        return handler

    async def spa(request: web.Request) -> web.Response:
        # One page for both scripts: ?tag=gtag (Google's, from the proxy) or ?tag=tracker.
        src = {"gtag": f"{PUBLIC_URL}/gtag/js?id={MEASUREMENT_ID}",
               "tracker": f"{PUBLIC_URL}/t.js?id={MEASUREMENT_ID}"}[request.query["tag"]]
        html = (PAGES / "spa.html").read_text(encoding="utf-8").replace("{{TAG}}", src)
        return web.Response(text=html, content_type="text/html")

    async def brochure(request: web.Request) -> web.Response:
        return web.Response(body=b"%PDF-1.4\n%%EOF\n", content_type="application/pdf")

    app = web.Application()
    for name in ("index.html", "direct.html", "consent.js"):
        app.router.add_get(f"/{name}", file(name))
    app.router.add_get("/spa.html", spa)
    app.router.add_get("/files/brochure.pdf", brochure)
    app.router.add_static("/cmp/", consent_manager())
    app.router.add_get("/elsewhere", elsewhere)
    return app


@dataclass
class Trap:
    """Chromium's forward proxy: every request leaving loopback arrives here, and stops."""

    requests: list[str] = field(default_factory=list)
    port: int = 0

    async def handle(self, request: web.BaseRequest) -> web.Response:
        self.requests.append(f"{request.method} {request.raw_path}")  # CONNECT host:443 too
        return web.Response(status=403)


# The proxy --------------------------------------------------------------------------------


@dataclass
class Proxy:
    proc: subprocess.Popen[str]
    admin_port: int
    log: Path

    def metrics(self) -> dict[str, float]:
        """The admin port's counters: ``name{label="value"}`` -> value."""
        url = f"http://127.0.0.1:{self.admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return values

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.log.read_text()


def total(metrics: dict[str, float], name: str) -> float:
    """A counter summed over its labels."""
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def port_80_is_free() -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", PROXY_PORT))
        except OSError as exc:
            pytest.fail(
                f"the proxy must listen on 127.0.0.1:{PROXY_PORT}, since gtag drops the port of "
                f"server_container_url, and it cannot be bound here ({exc}): run the tests as "
                "root (or with CAP_NET_BIND_SERVICE), with nothing else on port 80"
            )


EVENT_PARAMS = ["percent_scrolled", "link_domain", "outbound"]


def start_proxy(
    tmp_path: Path,
    *,
    page_port: int,
    capture_port: int,
    tag_port: int,
    event_params: list[str] = EVENT_PARAMS,
) -> Proxy:
    """``python -m proxy serve`` on 127.0.0.1:80, sending to the Capture server."""
    port_80_is_free()
    admin = free_port()
    # The shipped configuration, with only what this machine and this site need changed.
    shipped = yaml.safe_load((ROOT / "config" / "proxy.yaml").read_text(encoding="utf-8"))
    shipped.update(
        listen={"host": "127.0.0.1", "port": PROXY_PORT},
        admin={"host": "127.0.0.1", "port": admin},
        measurement_ids=[MEASUREMENT_ID],
        allowed_origins=[f"http://127.0.0.1:{page_port}"],
    )
    shipped["upstream"].update(url=f"http://127.0.0.1:{capture_port}/g/collect",
                               shutdown_grace=0)
    assert shipped["tag"]["enabled"] is True
    shipped["tag"].update(origin=f"http://127.0.0.1:{tag_port}", public_url=PUBLIC_URL)
    shipped["privacy"]["event_params"] = event_params
    config = tmp_path / "proxy.yaml"
    config.write_text(yaml.safe_dump(shipped), encoding="utf-8")
    log = tmp_path / "proxy.log"
    # The file alone decides: no override from the environment running the tests.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_PROXY_")}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
            env={**env, "PYTHONUNBUFFERED": "1"},
        )
    proxy = Proxy(proc, admin, log)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the proxy exited ({proc.returncode}):\n{log.read_text()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{PROXY_PORT}/readyz", timeout=1)
            return proxy
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"the proxy did not come up:\n{proxy.stop()}")


# The site as a whole, and one visitor's browser -------------------------------------------


@dataclass
class Site:
    loopback: Loopback
    tag_origin: TagOrigin
    tag_runner: web.BaseRunner
    tag_port: int
    capture: Capture
    page_port: int
    proxy: Proxy
    trap: Trap

    def url(self, page: str) -> str:
        return f"http://127.0.0.1:{self.page_port}/{page}"

    def stop_tag_origin(self) -> None:
        self.loopback.stop(self.tag_runner)

    def wait_for_events(self, names: set[str]) -> list[dict[str, str]]:
        """The events Google received, once every one of ``names`` is among them."""
        deadline = time.monotonic() + WAIT
        while True:
            events = forwarded_events(list(self.capture.hits))
            if names <= {e.get("en", "") for e in events} or time.monotonic() > deadline:
                return events
            time.sleep(0.1)


def forwarded_events(hits: list[Hit]) -> list[dict[str, str]]:
    """Each event of each forwarded request: the shared parameters, then the event's own."""
    events = []
    for hit in hits:
        shared = dict(parse_qsl(hit.query, keep_blank_values=True))
        lines = [line for line in hit.body.splitlines() if line]
        for line in lines or [""]:
            events.append({**shared, **dict(parse_qsl(line, keep_blank_values=True))})
    return events


@dataclass
class Visitor:
    """A browser context whose every request is recorded; off loopback, all are aborted."""

    context: BrowserContext
    page: Page
    requests: list[str] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # answers >= 400
    console: list[str] = field(default_factory=list)

    def answered(self, response: BrowserResponse) -> None:
        if response.status >= 400:
            self.errors.append(f"{response.status} {response.url}")

    def collects(self) -> list[str]:
        return [u for u in self.requests if urlsplit(u).path == "/g/collect"]

    def browser_cid(self) -> str:
        """The client id gtag keeps in the ``_ga`` cookie (``GA1.1.<random>.<time>``)."""
        ga = next(c["value"] for c in self.context.cookies() if c["name"] == "_ga")
        return ga.split(".", 2)[2]


@pytest.fixture(scope="module")
def loopback() -> Iterator[Loopback]:
    servers = Loopback()
    yield servers
    servers.close()


@pytest.fixture(scope="module")
def trap(loopback: Loopback) -> Iterator[Trap]:
    trap = Trap()
    runner, trap.port = loopback.start(trap.handle)
    yield trap
    loopback.stop(runner)


@pytest.fixture(scope="module")
def browser(trap: Trap) -> Iterator[Browser]:
    executable = chromium_path()
    with sync_playwright() as pw:
        # Headless Chromium names itself HeadlessChrome, which the proxy drops as automation:
        # the visitor's browser says Chrome, on every request (a context's override misses
        # the beacons sent while a page unloads).
        probe = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        agent = probe.new_page().evaluate("navigator.userAgent").replace("HeadlessChrome", "Chrome")
        probe.close()
        # Loopback bypasses the proxy (Chromium's default; Playwright's own proxy option
        # would send loopback through it too).
        args = [*CHROMIUM_ARGS, *QUIET_CHROMIUM, f"--user-agent={agent}",
                f"--proxy-server=http://127.0.0.1:{trap.port}"]
        browser = pw.chromium.launch(executable_path=executable, args=args)
        yield browser
        browser.close()


@pytest.fixture
def site(loopback: Loopback, trap: Trap, tmp_path: Path) -> Iterator[Site]:
    with running_site(loopback, trap, tmp_path) as site:
        yield site


@contextlib.contextmanager
def running_site(
    loopback: Loopback, trap: Trap, tmp_path: Path, event_params: list[str] = EVENT_PARAMS
) -> Iterator[Site]:
    """The tag origin, Google's collection endpoint, the site and the proxy, all running."""
    tag_origin = TagOrigin(gtag_js().encode())
    capture = Capture()
    tag_runner, tag_port = loopback.start(tag_origin.app())
    capture_runner, capture_port = loopback.start(capture.app())
    site_runner, page_port = loopback.start(site_app())
    proxy = start_proxy(tmp_path, page_port=page_port, capture_port=capture_port,
                        tag_port=tag_port, event_params=event_params)
    trap.requests.clear()
    try:
        yield Site(loopback, tag_origin, tag_runner, tag_port, capture, page_port, proxy, trap)
    finally:
        log = proxy.stop()
        print(f"proxy log:\n{log}")
        for runner in (site_runner, capture_runner, tag_runner):
            loopback.run(runner.cleanup())


@pytest.fixture
def visitor(browser: Browser, site: Site) -> Iterator[Visitor]:
    with new_visitor(browser) as visitor:
        yield visitor


@contextlib.contextmanager
def new_visitor(browser: Browser) -> Iterator[Visitor]:
    """A fresh browser context (no cookies, no storage), every request recorded."""
    context = browser.new_context()
    context.set_default_timeout(WAIT * 1000)
    visitor = Visitor(context, context.new_page())
    context.on("request", lambda request: visitor.requests.append(request.url))
    context.on("response", visitor.answered)
    visitor.page.on("console", lambda message: visitor.console.append(message.text))

    def stay_on_loopback(route: Route) -> None:
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            visitor.aborted.append(route.request.url)
            route.abort()

    context.route("**/*", stay_on_loopback)
    yield visitor
    context.close()


# A visit: choose in the banner, the next page, scroll to the end, leave by a link ----------


def hit_named(event: str) -> Callable[[BrowserRequest], bool]:
    """A hit to the proxy carrying ``event``: in its query, or in a line of a batch's body."""
    def matches(request: BrowserRequest) -> bool:
        url = urlsplit(request.url)
        if (url.hostname, url.port) != ("127.0.0.1", None) or url.path != "/g/collect":
            return False
        lines = [url.query, *(request.post_data or "").splitlines()]
        return any(dict(parse_qsl(line)).get("en") == event for line in lines)
    return matches


def visit(visitor: Visitor, site: Site, page_name: str, choice: str) -> None:
    page = visitor.page
    # gtag sends its page_view before the visitor chooses: denied, cookieless.
    with page.expect_request(hit_named("page_view")):
        page.goto(site.url(page_name))
    page.get_by_role("button", name=choice, exact=True).first.click()
    page.wait_for_function("CookieConsent.validConsent()")
    # The visitor's next page: the choice is in cc_cookie, gtag hears it before its page_view.
    with page.expect_request(hit_named("page_view")):
        page.reload()
    with page.expect_request(hit_named("scroll")):
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    # The link names localhost, the page 127.0.0.1: to gtag, an outbound click.
    page.click("#outbound")
    page.wait_for_url("**/elsewhere")


def assert_only_site_and_proxy_contacted(
    visitor: Visitor, site: Site, *, tracker: bool = False, sent: bool = True
) -> None:
    """Every request went to the site (its port, as 127.0.0.1 or localhost) or the proxy
    (127.0.0.1:80); none was aborted, none reached the outside world."""
    allowed = {("127.0.0.1", site.page_port), ("localhost", site.page_port),
               ("127.0.0.1", PROXY_PORT)}
    elsewhere = [u for u in visitor.requests
                 if (urlsplit(u).hostname, urlsplit(u).port or 80) not in allowed]
    google = [u for u in elsewhere + visitor.aborted + site.trap.requests
              if "google" in u or "doubleclick" in u]
    assert not google, f"requests to Google: {google}"
    assert not elsewhere, f"requests to other hosts: {elsewhere}"
    assert not visitor.aborted, f"requests off loopback: {visitor.aborted}"
    assert not site.trap.requests, f"requests through the browser's proxy: {site.trap.requests}"
    script = "/t.js" if tracker else "/gtag/js"
    assert any(urlsplit(u).netloc == "127.0.0.1" and urlsplit(u).path == script
               for u in visitor.requests), f"{script} was not loaded from the proxy"
    assert bool(visitor.collects()) is sent, visitor.collects()
    # Whatever the tag called on the proxy was answered, and the answers let the page read
    # them (CORS for the site's origin).
    assert not visitor.errors, visitor.errors
    cors = [m for m in visitor.console if "CORS" in m]
    assert not cors, cors


# The tests --------------------------------------------------------------------------------


def test_an_accepted_visit_reaches_google_sanitised(
    browser: Browser, visitor: Visitor, site: Site
) -> None:
    visit(visitor, site, "index.html", ACCEPT)
    expected = {"page_view", "user_engagement", "scroll", "click"}
    events = site.wait_for_events(expected)
    assert expected <= {e["en"] for e in events}, events

    assert_only_site_and_proxy_contacted(visitor, site)

    # The page_view gtag sent before the visitor chose (Consent Mode denied, no cc_cookie)
    # was dropped; the one after the choice went through.
    assert [e["en"] for e in events].count("page_view") == 1
    assert site.proxy.metrics()['analytics_proxy_beacons_dropped_total{reason="denied"}'] >= 1
    browser_cid = visitor.browser_cid()
    full_version = browser.version
    major = full_version.split(".")[0]
    for hit in site.capture.hits:
        assert browser_cid not in hit.query + hit.body
        assert browser_cid.split(".")[0] not in hit.query + hit.body
        assert "visitor@example.com" not in hit.query + hit.body  # in the page's title
        assert "Cookie" not in hit.headers
        # Rebuilt from family, major version and OS: the build is in no header or parameter.
        assert f"Chrome/{major}." in hit.headers["User-Agent"]
        assert full_version not in hit.query + hit.body + hit.headers["User-Agent"]
    for event in events:
        assert event["tid"] == MEASUREMENT_ID
        assert event["cid"] and event["cid"] != browser_cid
        assert event["_uip"] == "127.0.0.0"  # the address's /24 network, never the address
        kept = IDENTIFYING & event.keys()
        assert not kept, (event["en"], kept)
        assert not [k for k in event if k.startswith("sst.")], event
        assert not [k for k in event if k.startswith(("ep.", "epn."))
                    and k.split(".", 1)[1] not in {"percent_scrolled", "link_domain", "outbound"}]
    by_name = {e["en"]: e for e in events}
    assert by_name["scroll"]["epn.percent_scrolled"] == "90"
    assert by_name["click"]["ep.link_domain"] == "localhost"
    assert by_name["click"]["ep.outbound"] == "true"

    # The proxy fetched the tag on its own behalf: nothing of the visitor went with it.
    assert site.tag_origin.requests
    for fetched in site.tag_origin.requests:
        assert fetched["query"] == f"id={MEASUREMENT_ID}"
        assert "Cookie" not in fetched
        assert "X-Forwarded-For" not in fetched
        assert "Chrome" not in fetched.get("User-Agent", "")


def test_a_refused_visit_reaches_nobody(visitor: Visitor, site: Site) -> None:
    visit(visitor, site, "index.html", REJECT)
    sent = len(visitor.collects())
    assert sent >= 3  # page_view before the choice, page_view and scroll after it
    # Wait until the proxy has decided on every hit the page sent (and any sent on unload).
    deadline = time.monotonic() + WAIT
    while True:
        metrics = site.proxy.metrics()
        received = total(metrics, "analytics_proxy_beacons_received_total")
        decided = total(metrics, "analytics_proxy_beacons_dropped_total") + total(
            metrics, "analytics_proxy_beacons_accepted_total")
        if received >= sent and decided == received:
            break
        assert time.monotonic() < deadline, f"the proxy did not decide on {sent} hits: {metrics}"
        time.sleep(0.1)
    assert total(metrics, "analytics_proxy_beacons_accepted_total") == 0
    dropped = {k: v for k, v in metrics.items()
               if k.startswith("analytics_proxy_beacons_dropped_total{") and v}
    assert set(dropped) <= {'analytics_proxy_beacons_dropped_total{reason="denied"}',
                            'analytics_proxy_beacons_dropped_total{reason="no_consent"}'}, dropped
    assert site.capture.attempts == 0
    assert site.capture.hits == []
    assert_only_site_and_proxy_contacted(visitor, site)


def test_without_server_container_url_the_rewritten_tag_sends_to_the_proxy(
    visitor: Visitor, site: Site
) -> None:
    # The captured tag, unchanged, sends to https://www.google-analytics.com/g/collect.
    visit(visitor, site, "direct.html", ACCEPT)
    events = site.wait_for_events({"page_view", "scroll"})
    assert {"page_view", "scroll"} <= {e["en"] for e in events}, events
    assert_only_site_and_proxy_contacted(visitor, site)


def test_with_the_tag_origin_down_the_cached_tag_is_served(visitor: Visitor, site: Site) -> None:
    tag_url = f"http://127.0.0.1:{PROXY_PORT}/gtag/js?id={MEASUREMENT_ID}"
    with urllib.request.urlopen(tag_url, timeout=WAIT) as resp:
        assert resp.status == 200
        first = resp.read()
    fetches = len(site.tag_origin.requests)
    assert fetches == 1
    site.stop_tag_origin()
    with pytest.raises(urllib.error.URLError):  # Google is unreachable now
        urllib.request.urlopen(f"http://127.0.0.1:{site.tag_port}/gtag/js", timeout=1)

    with urllib.request.urlopen(tag_url, timeout=WAIT) as resp:
        assert resp.status == 200
        assert resp.read() == first
    visit(visitor, site, "index.html", ACCEPT)
    events = site.wait_for_events({"page_view", "scroll"})
    assert {"page_view", "scroll"} <= {e["en"] for e in events}, events
    assert len(site.tag_origin.requests) == fetches
    assert_only_site_and_proxy_contacted(visitor, site)
