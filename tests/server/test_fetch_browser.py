"""A fetch-based client in Debian's headless Chromium, on another loopback origin, posting
beacons to a real ``serve`` process: with the shipped ``allowed_origins: []`` ("any") CORS
is answered, the preflight of a JSON post included, and the consent cookie goes along
(credentials); listed origins refuse everyone else. Headless Chromium itself is a bot, its
beacons dropped, unless ``bots.allow_headless``."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.observe.test_dashboard import CHROMIUM_ARGS, chromium_path
from tests.serve_process import start_serve, wait_until_up

QUERY = (
    "v=2&tid=G-TEST1234&cid=1141082648.1693483972&en=page_view"
    "&dl=https%3A%2F%2Fwww.example.com%2F"
)
BODY = "en=scroll&_et=12"
CONTENT_TYPES = ["text/plain;charset=UTF-8", "application/json"]  # the second: preflighted
# What a site's own fetch-based client does; returns what the page could see of the answer.
FETCH = """async ({url, body, type}) => {
  try {
    const response = await fetch(url, {
      method: 'POST', body, mode: 'cors', credentials: 'include',
      headers: {'Content-Type': type},
    });
    return {status: response.status, type: response.type};
  } catch (error) {
    return {error: String(error)};
  }
}"""


@dataclass
class Serve:
    port: int
    admin: int
    proc: subprocess.Popen[str]
    forwarded: list[dict[str, Any]] = field(default_factory=list)

    def dropped(self, reason: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=10) as r:
            text = r.read().decode()
        line = f'analytics_proxy_beacons_dropped_total{{reason="{reason}"}} '
        return float(next(x for x in text.splitlines() if x.startswith(line)).split()[-1])

    def stop(self) -> list[dict[str, Any]]:
        """SIGTERM (the outbox delivers what it holds), then what the dry run printed."""
        self.proc.terminate()
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        self.forwarded = [json.loads(line) for line in out.splitlines() if '"dry_run"' in line]
        return self.forwarded


class SitePage(BaseHTTPRequestHandler):
    """The site's page, from a loopback server of its own: a page Chromium did not fetch
    from a loopback address may not call one (Local Network Access)."""

    def do_GET(self) -> None:
        page = b"<!doctype html><title>site</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The site's origin: 127.0.0.1 on a port of its own."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), SitePage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def serve(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Serve]:
    """A dry-run ``serve``; an indirect parameter adds to its configuration."""
    extra = getattr(request, "param", "")
    proc, port, admin = start_serve(
        tmp_path, "fetch",
        "measurement_ids: [G-TEST1234]\nupstream: {url: stdout, shutdown_grace: 0}\n" + extra,
    )
    served = Serve(port, admin, proc)
    try:
        wait_until_up(port)
        yield served
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def site_page(browser: Browser, site: str, proxy_port: int) -> Page:
    """The site's page: another origin than the proxy's, but the same site (127.0.0.1),
    so the proxy's first-party consent cookie goes with a credentialed request."""
    context = browser.new_context()
    context.add_cookies([{"name": "analytics_consent", "value": "granted",
                          "url": f"http://127.0.0.1:{proxy_port}/"}])
    page = context.new_page()
    page.goto(site + "/")
    return page


def post(page: Page, serve: Serve, content_type: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{serve.port}/g/collect?{QUERY}"
    answer: dict[str, Any] = page.evaluate(FETCH, {"url": url, "body": BODY,
                                                   "type": content_type})
    return answer


@pytest.mark.parametrize(
    "serve", ["allowed_origins: []\nbots: {allow_headless: true}\n"], indirect=True,
    ids=["any-origin"])
def test_with_empty_allowed_origins_a_fetch_client_on_another_origin_is_answered(
    browser: Browser, site: str, serve: Serve
) -> None:
    page = site_page(browser, site, serve.port)
    for content_type in CONTENT_TYPES:
        # Without CORS headers fetch rejects even a 204, and a JSON post is never sent.
        assert post(page, serve, content_type) == {"status": 204, "type": "cors"}, content_type
    forwarded = serve.stop()
    assert len(forwarded) == len(CONTENT_TYPES)  # the cookie's consent came along
    for request in forwarded:
        user_agent = request["headers"]["User-Agent"]
        assert "Chrome/" in user_agent and "Headless" not in user_agent
        assert user_agent.split("Chrome/")[1].split(" ")[0].endswith(".0.0.0")


@pytest.mark.parametrize(
    "serve", ["allowed_origins: [https://www.example.com]\nbots: {allow_headless: true}\n"],
    indirect=True, ids=["listed-origin"])
def test_listed_origins_leave_other_origins_without_cors_and_nothing_is_sent(
    browser: Browser, site: str, serve: Serve
) -> None:
    page = site_page(browser, site, serve.port)
    for content_type in CONTENT_TYPES:
        assert "Failed to fetch" in post(page, serve, content_type).get("error", "")
    assert serve.dropped("bad_origin") == 1  # the plain post arrived; the JSON one never did
    assert serve.stop() == []


def test_headless_chromium_is_dropped_as_a_bot_by_default(
    browser: Browser, site: str, serve: Serve
) -> None:
    page = site_page(browser, site, serve.port)
    assert post(page, serve, CONTENT_TYPES[0]) == {"status": 204, "type": "cors"}
    assert serve.dropped("bot") == 1
    assert serve.stop() == []
