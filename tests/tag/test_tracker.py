"""``/t.js``, the proxy's own tracker: served over loopback HTTP by the real public app, its
size, its build, the fields the policy lets it send, and its logic tests (node's runner)."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import brotli
import pytest
from aiohttp.test_utils import TestClient

from proxy.cli import main
from proxy.config import Config, from_mapping, load
from proxy.observe.metrics import Metrics
from proxy.sanitize.policy import compile_policy
from proxy.server.public import init_app
from proxy.tag.tracker import MARKER, Tracker, forwarded_fields, tracker_source

ROOT = Path(__file__).resolve().parents[2]
BROWSER_TOOLS = ROOT / "tests" / "browser" / "node_modules" / ".bin"
ID = "G-TRACK1234"
Clients = Callable[..., Awaitable[Any]]
SIZE_LIMIT = 3 * 1024  # bytes, gzipped: issue 12's budget


def config(**privacy: Any) -> Config:
    tag = privacy.pop("tag", {})
    return from_mapping(
        {"measurement_ids": [ID], "upstream": {"url": "stdout"}, "privacy": privacy, "tag": tag},
        env={},
    )


def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.fail("node is not installed: the tracker's logic tests need it (make test)")
    return path


@pytest.mark.parametrize("profile", ["strict", "balanced"])
def test_the_served_script_is_at_most_3_kb_gzipped(profile: str) -> None:
    tracker = Tracker(config(profile=profile, user_properties=["plan"]), Metrics())
    assert len(tracker.gzip) <= SIZE_LIMIT, len(tracker.gzip)
    assert len(brotli.decompress(tracker.br)) == len(tracker.identity)
    assert gzip.decompress(tracker.gzip) == tracker.identity


def test_the_minified_build_is_terser_output_of_the_source() -> None:
    terser = BROWSER_TOOLS / "terser"
    if not terser.exists():
        pytest.fail("no terser: npm ci --prefix tests/browser (make test runs it)")
    built = subprocess.run(
        [str(terser), str(ROOT / "proxy/tag/t.js"), "-c", "-m", "--comments", "/^!/"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert built.strip() == tracker_source().strip(), "run `make tracker` after editing t.js"
    assert tracker_source().count(MARKER) == 1
    assert tracker_source(minified=False).count(MARKER) == 1


def test_the_logic_tests_pass_with_nodes_runner() -> None:
    result = subprocess.run(
        [node(), "--test", str(ROOT / "tests" / "tracker")],
        capture_output=True, text=True, timeout=120,
    )
    summary = [line for line in result.stdout.splitlines() if line.startswith("# ")]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in summary, summary
    assert any(line.startswith("# pass ") and int(line.split()[2]) >= 30 for line in summary)


def test_the_script_sends_only_the_fields_the_policy_forwards() -> None:
    strict = forwarded_fields(compile_policy(config().privacy))
    assert {"sid", "_et", "_ss", "_fv", "seg", "ul", "dt", "dr"} <= strict.keys()
    assert not {"sct", "sr", "up"} & strict.keys()  # strict drops the session count, screen

    balanced = forwarded_fields(compile_policy(
        config(profile="balanced", user_properties=["plan"]).privacy))
    assert {"sct", "sr", "up"} <= balanced.keys()

    overridden = forwarded_fields(compile_policy(config(overrides={"sid": "drop"}).privacy))
    assert "sid" not in overridden
    # ...and the script is served with them written in.
    tracker = Tracker(config(overrides={"sid": "drop"}), Metrics())
    written = re.search(rb"JSON\.parse\('(\{[^']*\})'\)", tracker.identity)
    assert written is not None
    assert json.loads(written.group(1)) == overridden


async def test_served_versioned_compressed_and_revalidated(aiohttp_client: Clients) -> None:
    metrics = Metrics()
    proxy: TestClient = await aiohttp_client(init_app(config(), metrics))

    resp = await proxy.get(f"/t.js?id={ID}", headers={"Accept-Encoding": "gzip"},
                           auto_decompress=False)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/javascript; charset=utf-8"
    assert resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["Cache-Control"] == "public, max-age=300"  # unversioned: revalidated
    assert resp.headers["Vary"] == "Accept-Encoding"
    script = gzip.decompress(await resp.read())
    assert script.startswith(b"/*! analytics-proxy t.js")
    assert MARKER.encode() not in script
    etag = resp.headers["ETag"]

    resp = await proxy.get(f"/t.js?id={ID}", headers={"Accept-Encoding": "br"},
                           auto_decompress=False)
    assert resp.headers["Content-Encoding"] == "br"
    assert brotli.decompress(await resp.read()) == script
    resp = await proxy.get(f"/t.js?id={ID}", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in resp.headers
    assert await resp.read() == script

    version = etag.removeprefix('W/"').rstrip('"')
    resp = await proxy.get(f"/t.js?id={ID}&v={version}")
    assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    resp = await proxy.get(f"/t.js?id={ID}&v=0ld")
    assert resp.headers["Cache-Control"] == "public, max-age=300"

    resp = await proxy.get(f"/t.js?id={ID}", headers={"If-None-Match": etag})
    assert resp.status == 304
    assert await resp.read() == b""

    for other in ("G-OTHER123", "", "g-track1234", f"{ID}%00"):
        resp = await proxy.get(f"/t.js?id={other}")
        assert resp.status == 404, other
    registry = metrics.registry

    def counted(outcome: str) -> float:
        name = "analytics_proxy_tracker_requests_total"
        return registry.get_sample_value(name, {"outcome": outcome}) or 0.0

    assert counted("served") == 5
    assert counted("not_modified") == 1
    assert counted("not_found") == 4


def test_the_snippet_command_prints_the_versioned_tag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(
        f"measurement_ids: [{ID}]\ntag: {{public_url: 'https://stats.example.com'}}\n",
        encoding="utf-8",
    )
    assert main(["snippet", "--config", str(path)]) == 0
    first, second = capsys.readouterr().out.splitlines()
    version = Tracker(load(path), Metrics()).version
    assert first == (f'<script async src="https://stats.example.com/t.js?id={ID}&v={version}">'
                     "</script>")
    assert f"gtag('config', '{ID}');" in second


def test_the_readme_snippet_is_the_shipped_configurations() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = re.findall(r"/t\.js\?id=G-XXXXXXX&v=([0-9a-f]+)", readme)
    assert shown, "the README shows no versioned /t.js"
    version = Tracker(load(ROOT / "config" / "proxy.yaml", env={}), Metrics()).version
    assert set(shown) == {version}, "README: paste `analytics-proxy snippet` for the shipped config"


async def test_switched_off_it_is_not_served(aiohttp_client: Clients) -> None:
    proxy: TestClient = await aiohttp_client(init_app(config(tag={"tracker": False}), Metrics()))
    resp = await proxy.get(f"/t.js?id={ID}")
    assert resp.status == 404
