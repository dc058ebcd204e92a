"""What the audit trail costs per beacon, in CPU time on one core.

- ``sample()``: the per-beacon sampling decision;
- a sampled forwarded beacon: the pipeline with ``trace=True`` plus building its record,
  against the same beacon untraced and unrecorded;
- a dropped beacon's record (every drop is recorded).

Captured beacon TV-03 (37 parameters) with a consent cookie. Usage:

    python bench/audit_cost.py [--rounds 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from urllib.parse import urlsplit

from proxy.config import from_mapping
from proxy.ingest.client import parse_address
from proxy.observe.audit import MemoryAuditTrail
from proxy.observe.metrics import Metrics
from proxy.pipeline import IncomingRequest, Pipeline
from proxy.state.pseudonym import Pseudonymizer
from proxy.state.salts import MemoryState

ROOT = Path(__file__).resolve().parent.parent
HIT = json.loads((ROOT / "tests/fixtures/ga4-hits.jsonl").read_text().splitlines()[1])
QUERY = urlsplit(HIT["url"]).query
UA = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/125.0.6422.142 Safari/537.36")


async def measure(rounds: int) -> dict[str, float]:
    config = from_mapping({"measurement_ids": ["G-2FY44PPV92"], "audit": {"sample": 1.0},
                           "rate_limit": {"per_network": 0}}, env={})
    pipeline = Pipeline(config, Pseudonymizer(MemoryState(), bits=32, rotation=86400))
    trail = MemoryAuditTrail(config, Metrics())
    granted = IncomingRequest(query=QUERY, cookie="analytics_consent=granted", user_agent=UA,
                              client_ip=parse_address("81.2.69.160"))
    denied = IncomingRequest(query=QUERY, cookie="analytics_consent=denied", user_agent=UA)
    dropped = await pipeline.process(denied)
    assert not dropped.forward

    async def plain() -> None:
        await pipeline.process(granted)

    async def traced() -> None:
        await pipeline.process(granted, trace=True)

    async def recorded() -> None:
        outcome = await pipeline.process(granted, trace=True)
        trail.observe(outcome, QUERY, sampled=True)

    async def drop_record() -> None:
        trail.observe(dropped, QUERY, sampled=False)

    async def decision() -> None:
        trail.sample()

    results = {}
    for name, step in (("untraced", plain), ("traced", traced), ("traced_and_recorded", recorded),
                       ("drop_record", drop_record), ("sample_decision", decision)):
        for _ in range(rounds // 10):  # warm caches
            await step()
        start = time.process_time()
        for _ in range(rounds):
            await step()
        results[name] = (time.process_time() - start) / rounds * 1e6
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20_000)
    args = parser.parse_args()
    results = asyncio.run(measure(args.rounds))
    for name, micros in results.items():
        print(f"{name:<22} {micros:8.2f} µs")
    trace = results["traced"] - results["untraced"]
    record = results["traced_and_recorded"] - results["traced"]
    print(f"{'sampled beacon extra':<22} {trace + record:8.2f} µs "
          f"(trace {trace:.2f}, record {record:.2f})")


if __name__ == "__main__":
    main()
