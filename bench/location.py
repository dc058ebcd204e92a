"""What placing a visitor costs per beacon: geo lookup plus each location mode, on the real
GeoLite2 City database (test extra ``maxminddb-geolite2``), pinned to one core.

50,000 visits from 5,000 networks (10 visitors each, distinct pseudonyms), the same as the
README's lookup figure; then every network new (the per-network place cache cold). The mesh
mode counts in memory here (with Redis it adds batched writes, off the beacon's path).

    python bench/location.py
"""

from __future__ import annotations

import ipaddress
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.config import Location  # noqa: E402
from proxy.location.geo import GeoDatabase  # noqa: E402
from proxy.location.geo_index import Representatives, load_or_build  # noqa: E402
from proxy.location.mesh import MemoryCellCounter  # noqa: E402
from proxy.location.modes import compile_location  # noqa: E402

NETWORKS, PER_NETWORK = 5_000, 10


def visitors(db: GeoDatabase, rng: random.Random) -> list[ipaddress.IPv4Address]:
    """Public addresses the database places in a country, one per /24."""
    found: dict[int, ipaddress.IPv4Address] = {}
    while len(found) < NETWORKS:
        address = ipaddress.IPv4Address(rng.getrandbits(32))
        network = int(address) >> 8
        if address.is_global and network not in found and db.lookup(address).country:
            found[network] = address
    return list(found.values())


def main() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    import geolite2

    path = Path(geolite2.__file__).parent / "_maxminddb_geolite2" / "GeoLite2-City.mmdb"
    cache = Path(tempfile.gettempdir()) / "analytics-proxy-bench-geo"
    started = time.perf_counter()
    index = load_or_build(path, cache)
    print(f"representative index: {len(index):,} cells, {time.perf_counter() - started:.1f} s "
          "(built once per database version, then read from the cache)")
    rng = random.Random(7)
    addresses = visitors(GeoDatabase(path), rng)
    visits = [(a, f"{rng.getrandbits(31)}.{n}") for a in addresses for n in range(PER_NETWORK)]
    rng.shuffle(visits)
    reps = Representatives(index)
    modes = {
        "truncated": compile_location(Location(mode="truncated")),
        "country": compile_location(Location(mode="country"), reps),
        "mesh": compile_location(Location(mode="mesh"), reps, MemoryCellCounter(10, 86400)),
    }
    for cold in (False, True):
        for name, mode in modes.items():
            db = GeoDatabase(path)
            if cold:  # every visit from a network not seen before
                batch = [(a, cid) for a, cid in visits[:NETWORKS]]
                batch = [(ipaddress.IPv4Address(int(a) ^ (n << 8)), c)
                         for n, (a, c) in enumerate(batch)]
                batch = [(a, c) for a, c in batch if db.lookup(a).country]
                db = GeoDatabase(path)
            else:
                batch = visits
            # cold: every network new; first: 5,000 networks' first visits among 50,000;
            # steady: the same 50,000 visits again, every network's place remembered.
            for label in (("cold",) if cold else ("first", "steady")):
                levels: dict[str, int] = {}
                started = time.perf_counter()
                for address, member in batch:
                    place = db.lookup(address)
                    _, level = mode(address, place, member)
                    levels[level] = levels.get(level, 0) + 1
                per = (time.perf_counter() - started) / len(batch) * 1e6
                print(f"{label:<6} {name:<10} {per:6.2f} µs per beacon over {len(batch):,} "
                      f"visits  levels {dict(sorted(levels.items()))}")
            db.close()


if __name__ == "__main__":
    main()
