"""Throughput benchmark: the whole proxy path against a naive pass-through baseline.

Each target runs as one process pinned to core 0; its sink (standing in for Google) and wrk
share core 1. The figure that counts is beacons *delivered* to the sink per second while wrk
sends load; the proxy also reports what it accepted and lost. Usage:

    python bench/run.py [--duration 10] [--connections 64] [--targets naive,proxy] [--paired]
        [--pages 1] [--delay-ms 0]

The load comes from 65,536 client networks (``X-Forwarded-For`` from the trusted loopback
peer) with the rate limiter on at its default; see ``lua``.

``--paired`` runs the targets at the same time, sharing core 0, for a ratio that the
machine's drift from one run to the next does not distort.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HIT = json.loads((ROOT / "tests/fixtures/ga4-hits.jsonl").read_text().splitlines()[1])
QUERY = HIT["url"].split("?", 1)[1]
UA = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/125.0.6422.142 Safari/537.36")
COOKIE = "_ga=GA1.1.832723134.1720041784; analytics_consent=granted; session=3f9a1c"
NETWORKS = 65536  # distinct client /24s the load comes from, each in turn
# Page i of --pages: its own URL and title (the captured referrer stays).
PAGE_DL, PAGE_DT = "dl=https%3A%2F%2Famplitude.com%2F", "dt=Amplitude%20%7C%20"


def lua(pages: int = 1, delay_ms: float = 0.0) -> str:
    """The wrk script. Every request carries an X-Forwarded-For written by the trusted peer
    (127.0.0.1, the default trusted_proxies) naming a client in one of NETWORKS public /24s,
    taken in turn: the rate limiter (on, at its default) keys a new network on nearly every
    beacon, as it would behind a load balancer, and no network comes near its limit.
    ``pages`` > 1: the beacons cycle through that many page URLs and titles, as a site's
    visitors do (1: the captured beacon itself). ``delay_ms``: each connection waits that
    long before each request (a fixed offered rate, for latency at a given load)."""
    query = QUERY
    if pages > 1:
        query = (QUERY.replace(PAGE_DL, PAGE_DL + "pPAGE%2F")
                 .replace(PAGE_DT, PAGE_DT + "Page%20PAGE%20%7C%20"))
    delay = f"delay = function() return {delay_ms} end" if delay_ms else ""
    return f"""
wrk.method = "POST"
wrk.headers["User-Agent"] = "{UA}"
wrk.headers["Cookie"] = "{COOKIE}"
wrk.headers["Content-Type"] = "text/plain;charset=UTF-8"
wrk.body = ""
local requests = {{}}
local count = 0
init = function(args)
  local firsts = {{}}
  for a = 11, 223 do
    if a ~= 100 and a ~= 127 and a ~= 169 and a ~= 172 and a ~= 192 and a ~= 198 then
      firsts[#firsts + 1] = a
    end
  end
  local query = "{query}"
  for i = 0, {NETWORKS} - 1 do
    local a = firsts[(i * 7919) % #firsts + 1]
    local b, c = (i * 31) % 256, math.floor(i / 256) % 256
    wrk.headers["X-Forwarded-For"] = a .. "." .. b .. "." .. c .. "." .. (i % 250 + 1)
    local page = tostring((i * 40503) % {pages})
    requests[i + 1] = wrk.format(nil, "/g/collect?" .. query:gsub("PAGE", page))
  end
end
request = function()
  count = count % {NETWORKS} + 1
  return requests[count]
end
{delay}
"""


LUA = lua()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def sink_count(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=5) as resp:
        return int(resp.read())


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else 0.0


def pinned(core: int, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["taskset", "-c", str(core), *argv], **kwargs)  # type: ignore[call-overload,no-any-return]


# Targets that keep their state in a Redis of their own (on core 1, beside the sink):
# proxy-redis with the default acknowledgement, proxy-durable with state.durable_ack.
REDIS_TARGETS = {"proxy-redis": "", "proxy-durable": ", durable_ack: true"}
_REDIS: list[subprocess.Popen[bytes]] = []  # stopped with the targets


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    sys.path.insert(0, str(ROOT))
    from tests.redis_server import redis_server_binary

    port = free_port()
    proc = pinned(1, [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                      "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                  stdout=subprocess.DEVNULL)
    wait_port(port)
    return proc, f"redis://127.0.0.1:{port}/0"


def start_target(name: str, port: int, upstream: str, workdir: Path) -> subprocess.Popen[bytes]:
    if name == "naive":
        return pinned(0, [sys.executable, str(ROOT / "bench/naive.py"), str(port), upstream])
    state = ""
    if name in REDIS_TARGETS:
        redis, redis_url = start_redis(workdir)
        _REDIS.append(redis)
        state = f"state: {{redis_url: '{redis_url}'{REDIS_TARGETS[name]}}}\n"
    config = workdir / "bench.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"admin: {{host: 127.0.0.1, port: {free_port()}}}\n"
        "measurement_ids: [G-2FY44PPV92]\n"
        f"upstream: {{url: '{upstream}', queue_size: 20000}}\n"
        "log: {level: warning}\n"
        # The rate limiter on, at its default; the load comes from many networks (LUA).
        "trusted_proxies: [127.0.0.1/32]\n" + state
    )
    argv = [sys.executable, "-m", "proxy", "serve", "--config", str(config)]
    if name not in ("proxy", *REDIS_TARGETS):  # e.g. a script serving the config another way
        argv = [sys.executable, name, str(config)]
    return pinned(0, argv, cwd=ROOT, stdout=subprocess.DEVNULL)


def wrk(port: int, seconds: int, connections: int, script: Path) -> str:
    url = f"http://127.0.0.1:{port}/g/collect?{QUERY}"
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-s", str(script), url], capture_output=True, text=True, check=True)
    return out.stdout


Results = dict[str, dict[str, float]]
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def percentile_ms(report: str, percent: str) -> float:
    """A percentile of the answers' latency from wrk's ``--latency`` distribution, in ms."""
    match = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s)\s*$", report, re.MULTILINE)
    return float(match.group(1)) * UNIT_MS[match.group(2)] if match else float("nan")


def measure(names: list[str], args: argparse.Namespace, workdir: Path) -> Results:
    """Run ``names`` at the same time on core 0, each with its own sink and wrk on core 1.
    One name: the target has the core to itself. Several (``--paired``): they share it, so
    each one's rate is set by its cost per beacon, and the machine's drift during the run
    weighs on all of them alike."""
    sinks: list[tuple[int, subprocess.Popen[bytes]]] = []
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    script = workdir / "beacon.lua"
    script.write_text(lua(args.pages, args.delay_ms))
    try:
        for name in names:
            sink_port, port = free_port(), free_port()
            sinks.append((sink_port, pinned(1, [sys.executable, str(ROOT / "bench/sink.py"),
                                                str(sink_port)])))
            wait_port(sink_port)
            target_dir = workdir / Path(name).name
            target_dir.mkdir()
            procs.append(start_target(name, port, f"http://127.0.0.1:{sink_port}/g/collect",
                                      target_dir))
            ports.append(port)
        for port in ports:
            wait_port(port)
        with ThreadPoolExecutor(len(names)) as pool:
            # Warm-up: caches, keep-alive pool.
            list(pool.map(lambda port: wrk(port, 2, args.connections, script), ports))
            time.sleep(1)
            rss_start = [rss_mib(proc.pid) for proc in procs]
            before, t0 = [sink_count(p) for p, _ in sinks], time.monotonic()
            reports = list(pool.map(lambda port: wrk(port, args.duration, args.connections,
                                                     script), ports))
            after, t1 = [sink_count(p) for p, _ in sinks], time.monotonic()
        results = {}
        for i, name in enumerate(names):
            answered = float(re.search(r"Requests/sec:\s+([\d.]+)", reports[i]).group(1))  # type: ignore[union-attr]
            results[name] = {"delivered_per_s": (after[i] - before[i]) / (t1 - t0),
                             "answered_per_s": answered, "rss_start_mib": rss_start[i],
                             "rss_end_mib": rss_mib(procs[i].pid),
                             "p50_ms": percentile_ms(reports[i], "50"),
                             "p99_ms": percentile_ms(reports[i], "99")}
        return results
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for _, sink in sinks:
            sink.terminate()
        while _REDIS:
            _REDIS.pop().terminate()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--targets", default="naive,proxy")
    parser.add_argument("--pages", type=int, default=1,
                        help="page URLs and titles the beacons cycle through (1: the capture)")
    parser.add_argument("--delay-ms", type=float, default=0.0,
                        help="each connection's pause before each request: a fixed offered "
                             "rate of about connections x 1000 / delay per second")
    parser.add_argument("--paired", action="store_true",
                        help="run the targets at once, sharing core 0 (see measure)")
    args = parser.parse_args()
    if os.cpu_count() and os.cpu_count() < 2:  # type: ignore[operator]
        print("needs two cores", file=sys.stderr)
        return 1
    names = args.targets.split(",")
    groups = [names] if args.paired else [[name] for name in names]
    results: Results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for number, group in enumerate(groups):
            workdir = Path(tmp) / str(number)
            workdir.mkdir()
            results.update(measure(group, args, workdir))
    shared = " (sharing core 0)" if args.paired else ""
    print(f"| target{shared} | delivered/s | answered/s | answer p50 / p99 (ms) "
          "| RSS start → end (MiB) |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['delivered_per_s']:,.0f} | {r['answered_per_s']:,.0f} | "
              f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} | "
              f"{r['rss_start_mib']:.0f} → {r['rss_end_mib']:.0f} |")
    if args.paired and set(results) == {"naive", "proxy"}:
        ratio = results["proxy"]["delivered_per_s"] / results["naive"]["delivered_per_s"]
        print(f"\nproxy / naive, delivered: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
