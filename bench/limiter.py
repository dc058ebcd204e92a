"""The rate limiter's state under many distinct client networks: RSS of the process and Redis
commands per second, over time, for the memory limiter and the Redis one (as ``serve`` builds
them), while beacons arrive from a stream of networks and then while nothing arrives.

Each limiter runs in a process of its own (so its RSS is its own) with the real clock and the
real sync loop; beacons come at a steady rate from ``--networks`` distinct /24s taken in
turn, so each window sees ``rate x window`` distinct networks until all were seen, then the
same networks again. Redis commands are read from ``INFO commandstats`` (the monitor's own
INFO calls left out); Redis is a private redis-server (or ``--redis-url``). Usage:

    python bench/limiter.py [--networks 100000] [--rate 2500] [--window 20s] \
        [--duration 80] [--idle 20] [--only memory|redis] [--module PATH]

``--module`` loads another ``ratelimit.py`` (e.g. ``git show HEAD~1:proxy/state/ratelimit.py``) to
measure it the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import inspect
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402

from proxy.config import parse_duration  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

SALT = b"bench-limiter-salt-0123456789abc"
TICK = 0.01  # seconds between bursts of beacons
REPORT = 5.0  # seconds between lines


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def load_module(path: str | None) -> ModuleType:
    if path is None:
        import proxy.state.ratelimit

        return proxy.state.ratelimit
    spec = importlib.util.spec_from_file_location("ratelimit_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(module: ModuleType, client: Any, limit: int, window: int) -> Any:
    """As ``proxy.server.make_limiter`` builds it: Redis counters, or the memory limiter."""
    if client is not None:
        store = module.RedisCounters(client)
    elif inspect.signature(module.RateLimiter).parameters["store"].default is None:
        store = None  # needs no store of its own
    else:
        store = module.MemoryCounters()
    return module.RateLimiter(limit, window, store)


async def commands(monitor: Any) -> dict[str, int]:
    stats = await monitor.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()
            if name not in ("cmdstat_info",)}


async def redis_cpu(monitor: Any) -> float:
    cpu = await monitor.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def child(args: argparse.Namespace) -> None:
    module = load_module(args.module)
    window = parse_duration(args.window)
    client = monitor = None
    if args.store == "redis":
        client = aioredis.from_url(args.redis_url)
        monitor = aioredis.from_url(args.redis_url)
        await client.flushdb()
    limiter = build(module, client, args.limit, window)
    syncing = asyncio.create_task(limiter.run())
    per_tick = max(1, round(args.rate * TICK))
    sent = refused = 0
    start = time.monotonic()
    last_at, last_sent, last_cpu = start, 0, time.process_time()
    last_cmds = await commands(monitor) if monitor else {}
    last_redis_cpu = await redis_cpu(monitor) if monitor else 0.0
    total_cmds: dict[str, int] = {}
    print(f"{args.store}: {args.networks:,} networks, {args.rate:,} beacons/s, window "
          f"{args.window}, load {args.duration:.0f} s then idle {args.idle:.0f} s", flush=True)
    print(f"{'t s':>5} {'phase':>5} {'beacons/s':>10} {'RSS MiB':>8} {'CPU %':>6} "
          f"{'Redis cmd/s':>12} {'Redis CPU %':>11} {'Redis MiB':>10}  tracked", flush=True)
    next_report = start + REPORT
    while True:
        now = time.monotonic()
        elapsed = now - start
        if elapsed >= args.duration + args.idle:
            break
        if elapsed < args.duration:
            due = int(elapsed * args.rate) - sent
            for _ in range(min(due, 4 * per_tick)):
                n = sent % args.networks
                network = f"{10 + n // 65536}.{n // 256 % 256}.{n % 256}.0"
                if not limiter.allow(module.RateLimiter.network_key(network, SALT)):
                    refused += 1
                sent += 1
        if now >= next_report:
            cpu = time.process_time()
            span = now - last_at
            redis_rate = used = redis_load = "-"
            if monitor is not None:
                cmds = await commands(monitor)
                delta = {k: v - last_cmds.get(k, 0) for k, v in cmds.items()}
                for k, v in delta.items():
                    total_cmds[k] = total_cmds.get(k, 0) + v
                redis_rate = f"{sum(delta.values()) / span:,.0f}"
                memory = await monitor.info("memory")
                used = f"{int(memory['used_memory']) / 2**20:.1f}"
                busy = await redis_cpu(monitor)
                redis_load = f"{100 * (busy - last_redis_cpu) / span:.0f}"
                last_cmds, last_redis_cpu = cmds, busy
            phase = "load" if elapsed < args.duration else "idle"
            print(f"{elapsed:5.0f} {phase:>5} {(sent - last_sent) / span:10,.0f} "
                  f"{rss_mib():8.1f} {100 * (cpu - last_cpu) / span:6.0f} {redis_rate:>12} "
                  f"{redis_load:>11} {used:>10}  {limiter.tracked():,}", flush=True)
            last_at, last_sent, last_cpu = now, sent, cpu
            next_report += REPORT
        await asyncio.sleep(TICK)
    syncing.cancel()
    await asyncio.gather(syncing, return_exceptions=True)
    summary = f"{args.store}: {sent:,} beacons sent, {refused:,} refused"
    if total_cmds:
        top = sorted(total_cmds.items(), key=lambda kv: -kv[1])[:4]
        summary += "; Redis commands: " + ", ".join(f"{k} {v:,}" for k, v in top)
    print(summary, flush=True)
    for c in (client, monitor):
        if c is not None:
            await c.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--networks", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=2500, help="beacons per second")
    parser.add_argument("--window", default="20s", help="rate_limit.window (serve: 1m)")
    parser.add_argument("--limit", type=int, default=1200, help="rate_limit.per_network")
    parser.add_argument("--duration", type=float, default=80.0, help="seconds of load")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds without beacons")
    parser.add_argument("--only", choices=("memory", "redis"))
    parser.add_argument("--module", help="another ratelimit.py to measure")
    parser.add_argument("--redis-url", help="default: a private redis-server")
    parser.add_argument("--store", help=argparse.SUPPRESS)  # a child process's limiter
    args = parser.parse_args()
    if args.store:
        asyncio.run(child(args))
        return
    server = None
    with tempfile.TemporaryDirectory() as workdir:
        if args.redis_url is None and args.only != "memory":
            server = RedisServer(Path(workdir))
            server.start()
            args.redis_url = server.url
        try:
            for store in ("memory", "redis"):
                if args.only not in (None, store):
                    continue
                argv = [sys.executable, __file__, "--store", store,
                        *(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                          if v is not None and k not in ("store", "only"))]
                subprocess.run(argv, check=True)
                print()
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
