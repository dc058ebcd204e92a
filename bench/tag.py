"""What serving the first-party tag costs: ``/gtag/js`` from the proxy's memory, against a
static file server handing out the same rewritten script, pre-compressed.

Each server runs alone, pinned to core 0; wrk (one thread) runs on core 1 and asks for the
brotli-encoded tag over keep-alive, as browsers do. The static server is aiohttp's own file
handler (``web.static`` with ``.br`` siblings, sendfile). Usage:

    python bench/tag.py [--duration 10] [--connections 32] [--runs 3]

Needs wrk (apt-get install wrk) and Google's gtag.js fixture in ../shared/fixtures/gtag/.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import brotli

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import free_port, wait_port  # noqa: E402
from proxy.tag.rewrite import rewrite  # noqa: E402

GTAG_ID = "G-69XYTDF1T2"
FIXTURE = ROOT.parent / "shared" / "fixtures" / "gtag" / f"gtag-{GTAG_ID}.js"
PUBLIC = "https://stats.example.com"

STATIC_SERVER = """
import sys
from aiohttp import web
app = web.Application()
app.router.add_static("/gtag", sys.argv[1])
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), access_log=None, print=None)
"""


def pinned(argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["taskset", "-c", "0", *argv], **kwargs)  # type: ignore[call-overload,no-any-return]


def wrk(url: str, seconds: int, connections: int) -> float:
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
         "-H", "Accept-Encoding: gzip, deflate, br", url],
        capture_output=True, text=True, check=True,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None or "Non-2xx" in out:
        raise RuntimeError(f"wrk failed:\n{out}")
    return float(match.group(1))


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def serve_proxy(workdir: Path) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], str]:
    """The proxy, its tag fetched once from a loopback origin serving the fixture."""
    origin_dir = workdir / "origin"
    (origin_dir / "gtag").mkdir(parents=True)
    (origin_dir / "gtag" / "js").write_bytes(FIXTURE.read_bytes())
    origin_port, port, admin = free_port(), free_port(), free_port()
    origin = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(origin_port), "--bind", "127.0.0.1",
         "--directory", str(origin_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    config = workdir / "proxy.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"admin: {{host: 127.0.0.1, port: {admin}}}\n"
        f"measurement_ids: [{GTAG_ID}]\n"
        "upstream: {url: stdout}\n"
        "log: {level: warning}\n"
        f"tag: {{origin: 'http://127.0.0.1:{origin_port}', public_url: '{PUBLIC}'}}\n"
    )
    proxy = pinned([sys.executable, "-m", "proxy", "serve", "--config", str(config)],
                   cwd=ROOT, stdout=subprocess.DEVNULL)
    wait_port(origin_port)
    wait_port(port)
    url = f"http://127.0.0.1:{port}/gtag/js?id={GTAG_ID}"
    urllib.request.urlopen(url, timeout=10).read()  # the one fetch; from here on, memory
    return proxy, origin, url


def serve_static(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """aiohttp's static handler with the same rewritten tag and a .br sibling."""
    static_dir = workdir / "static"
    static_dir.mkdir()
    data = rewrite(FIXTURE.read_text(encoding="utf-8"), PUBLIC).text.encode()
    (static_dir / "js").write_bytes(data)
    (static_dir / "js.br").write_bytes(brotli.compress(data, quality=9))
    port = free_port()
    proc = pinned([sys.executable, "-c", STATIC_SERVER, str(static_dir), str(port)])
    wait_port(port)
    return proc, f"http://127.0.0.1:{port}/gtag/js"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not FIXTURE.exists():
        print(f"Google's gtag.js fixture is needed: {FIXTURE}", file=sys.stderr)
        return 2
    rates: dict[str, list[float]] = {"proxy /gtag/js": [], "aiohttp static": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        proxy, origin, proxy_url = serve_proxy(workdir)
        static, static_url = serve_static(workdir)
        try:
            for url in (proxy_url, static_url):
                wrk(url, 2, args.connections)  # warm-up
            for _ in range(args.runs):
                rates["proxy /gtag/js"].append(wrk(proxy_url, args.duration, args.connections))
                rates["aiohttp static"].append(wrk(static_url, args.duration, args.connections))
                time.sleep(0.5)
        finally:
            for proc in (proxy, static, origin):
                stop(proc)
    print(f"brotli-encoded tag, {args.connections} keep-alive connections, "
          f"{args.duration}s per run, server on one core")
    for name, values in rates.items():
        shown = " / ".join(f"{v:,.0f}" for v in values)
        print(f"  {name:<16} {shown} requests/s")
    ratios = [p / s for p, s in zip(rates["proxy /gtag/js"], rates["aiohttp static"], strict=True)]
    print("  ratio            " + " / ".join(f"{r:.2f}" for r in ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
