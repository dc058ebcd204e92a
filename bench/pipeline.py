"""What the privacy pipeline costs per beacon on the shared captures, in CPU time on one core.

Every captured hit of ``tests/fixtures/ga4-hits.jsonl`` (query and body) goes through
``Pipeline.process`` with analytics consent granted and every event parameter it carries
allow-listed, so that all of its values are scanned (one capture is a denial, dropped at
the consent gate as in production). The figure is the mean over the
captures, in a tight loop (untraced, as ``serve`` runs it). Usage:

    python bench/pipeline.py [--rounds 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from proxy.config import from_mapping
from proxy.ingest.client import parse_address
from proxy.pipeline import IncomingRequest, Pipeline
from proxy.state.pseudonym import Pseudonymizer
from proxy.state.salts import MemoryState

ROOT = Path(__file__).resolve().parent.parent
HITS = [json.loads(line)
        for line in (ROOT / "tests/fixtures/ga4-hits.jsonl").read_text().splitlines()]
UA = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/125.0.6422.142 Safari/537.36")


def _requests() -> tuple[list[str], list[str], list[IncomingRequest]]:
    tids: set[str] = set()
    params: set[str] = set()
    requests = []
    for hit in HITS:
        query = urlsplit(hit["url"]).query
        body = hit.get("body") or ""
        for line in [query, *body.splitlines()]:
            for name, value in parse_qsl(line, keep_blank_values=True):
                if name == "tid":
                    tids.add(value)
                elif name.startswith(("ep.", "epn.")):
                    params.add(name.partition(".")[2])
        requests.append(IncomingRequest(
            query=query, body=body.encode(), cookie="analytics_consent=granted",
            user_agent=UA, client_ip=parse_address("81.2.69.160"), country="GB",
        ))
    return sorted(tids), sorted(params), requests


async def measure(rounds: int) -> float:
    tids, params, requests = _requests()
    config = from_mapping({"measurement_ids": tids, "rate_limit": {"per_network": 0},
                           "privacy": {"event_params": params}}, env={})
    pipeline = Pipeline(config, Pseudonymizer(MemoryState(), bits=32, rotation=86400))
    forwarded = [(await pipeline.process(request)).forward for request in requests]
    assert sum(forwarded) >= len(requests) - 1, forwarded  # one capture carries a denial
    per_round = len(requests)
    for _ in range(max(1, rounds // 10 // per_round)):
        for request in requests:
            await pipeline.process(request)
    loops = max(1, rounds // per_round)
    start = time.process_time()
    for _ in range(loops):
        for request in requests:
            await pipeline.process(request)
    return (time.process_time() - start) / (loops * per_round) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    figures = [asyncio.run(measure(args.rounds)) for _ in range(args.repeat)]
    print(f"pipeline per beacon on {len(HITS)} captures: "
          + " / ".join(f"{f:.1f}" for f in figures) + f" µs (best {min(figures):.1f})")


if __name__ == "__main__":
    main()
