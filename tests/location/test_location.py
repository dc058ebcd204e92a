"""Location modes country and mesh: representative addresses taken from the database's own
networks, k-anonymous cells, internal traffic, and the real GeoLite2 City check."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import maxminddb
import pytest

from proxy.config import from_mapping
from proxy.location import geo_index
from proxy.location.geo import GeoDatabase
from proxy.location.geo_index import Representatives, build_index, cell_keys, load_or_build
from proxy.location.mesh import MemoryCellCounter, RedisCellCounter
from proxy.observe.explain import BeaconInput, Explainer
from proxy.pipeline import IncomingRequest, Pipeline
from proxy.state.pseudonym import Pseudonymizer
from proxy.state.salts import MemoryState
from tests.conftest import GA4_HITS
from tests.location.test_geo import build

HIT = next(h for h in GA4_HITS if h["id"] == "TV-04")
TID = "G-18JR3Q8PJ8"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
GRANTED = "analytics_consent=granted"

LONDON, LEEDS, BOSTON = 2643743, 2644688, 4930956
ENG = {"iso_code": "ENG"}
NETWORKS: dict[str, dict[str, Any]] = {
    # GB: a small city network, a larger one, a country-only network and a region-only one.
    "81.2.69.0/24": {"country": {"iso_code": "GB"}, "subdivisions": [ENG],
                     "city": {"geoname_id": LONDON}},
    "81.2.70.0/23": {"country": {"iso_code": "GB"}, "subdivisions": [ENG],
                     "city": {"geoname_id": LONDON}},
    "2.24.0.0/16": {"country": {"iso_code": "GB"}, "subdivisions": [ENG],
                    "city": {"geoname_id": LEEDS}},
    "25.0.0.0/12": {"country": {"iso_code": "GB"}},
    "31.48.0.0/14": {"country": {"iso_code": "GB"}, "subdivisions": [ENG]},
    # A larger GB network, but an anonymous proxy: never a representative.
    "5.0.0.0/10": {"country": {"iso_code": "GB"}, "traits": {"is_anonymous_proxy": True}},
    # US: two country-only networks of the same size: the lower address wins.
    "7.16.0.0/12": {"country": {"iso_code": "US"}},
    "6.16.0.0/12": {"country": {"iso_code": "US"}},
    "203.0.113.0/24": {"country": {"iso_code": "US"}, "subdivisions": [{"iso_code": "MA"}],
                       "city": {"geoname_id": BOSTON}},
    # DE: an IPv6 network larger than its IPv4 one: IPv4 is still preferred.
    "2001:db8::/32": {"country": {"iso_code": "DE"}},
    "192.0.2.0/28": {"country": {"iso_code": "DE"}},
    # NZ: only IPv6.
    "2001:db9::/32": {"country": {"iso_code": "NZ"}},
    "198.51.100.0/24": {"country": {"iso_code": "FR"}},  # an office network in tests below
}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return build(tmp_path / "geo.mmdb", NETWORKS)


def ip(text: str) -> Any:
    return ipaddress.ip_address(text)


def country_of(path: Path, address: str) -> str | None:
    with maxminddb.open_database(str(path)) as reader:
        record: Any = reader.get(address)
    return record["country"]["iso_code"] if record else None


def test_representatives_follow_the_documented_order(db_path: Path) -> None:
    index = build_index(db_path)
    # A record with no region and no city is preferred for a country, however small.
    assert index["country:GB"] == "25.0.0.0"
    # For the region, a region-only record beats the larger city networks.
    assert index["region:GB-ENG"] == "31.48.0.0"
    # For a city, its largest network.
    assert index[f"city:{LONDON}"] == "81.2.70.0"
    assert index[f"city:{LEEDS}"] == "2.24.0.0"
    assert index["country:US"] == "6.16.0.0"  # same size: the lower address
    assert index["country:DE"] == "192.0.2.0"  # IPv4 before a larger IPv6 network
    assert index["country:NZ"] == "2001:db9::"  # only IPv6 exists
    assert "5.0.0.0" not in index.values()  # the anonymous proxy


def test_each_representative_looks_up_to_its_own_cell(db_path: Path) -> None:
    index = build_index(db_path)
    with maxminddb.open_database(str(db_path)) as reader:
        for key, address in index.items():
            record: Any = reader.get(address)
            level, _, cell = key.partition(":")
            if level == "country":
                assert record["country"]["iso_code"] == cell
            elif level == "region":
                assert f"{record['country']['iso_code']}-{record['subdivisions'][0]['iso_code']}" \
                    == cell
            else:
                assert record["city"]["geoname_id"] == int(cell)


def test_the_choice_is_deterministic_and_independent_of_insertion_order(
        tmp_path: Path, db_path: Path) -> None:
    shuffled = build(tmp_path / "other.mmdb", dict(reversed(list(NETWORKS.items()))))
    assert build_index(db_path) == build_index(db_path) == build_index(shuffled)


def test_an_ipv4_only_database(tmp_path: Path) -> None:
    path = build(tmp_path / "v4.mmdb",
                 {k: v for k, v in NETWORKS.items() if ":" not in k}, ip_version=4)
    index = build_index(path)
    assert index["country:GB"] == "25.0.0.0"
    assert country_of(path, index["country:US"]) == "US"


def test_the_index_is_cached_per_database_version(
        tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    first = load_or_build(db_path, cache)
    files = list(cache.glob("representatives-*.json"))
    assert len(files) == 1

    def no_rebuild(path: Any) -> dict[str, str]:
        raise AssertionError("the cached index should have been used")

    monkeypatch.setattr(geo_index, "build_index", no_rebuild)
    assert load_or_build(db_path, cache) == first
    # A new version of the database gets its own entry.
    monkeypatch.undo()
    build(db_path, {**NETWORKS, "25.0.0.0/12": {"country": {"iso_code": "IE"}}})
    assert load_or_build(db_path, cache)["country:IE"] == "25.0.0.0"
    assert len(list(cache.glob("representatives-*.json"))) == 2


async def test_built_in_a_child_process(db_path: Path, tmp_path: Path) -> None:
    reps = Representatives()
    assert not reps.ready and reps.get("country:GB") is None
    await reps.build(str(db_path), str(tmp_path / "cache"))
    assert reps.ready and reps.get("country:GB") == "25.0.0.0"


def test_cell_keys() -> None:
    assert cell_keys("GB", "ENG", LONDON) == (f"city:{LONDON}", "region:GB-ENG", "country:GB")
    assert cell_keys("GB", None, None) == ("country:GB",)
    assert cell_keys(None, "ENG", LONDON) == ()


# --- the pipeline -------------------------------------------------------------------------

def make_pipeline(db_path: Path, mode: str, tmp_path: Path, *, ready: bool = True,
                  cells: Any = None, **extra: Any) -> Pipeline:
    config = from_mapping({
        "measurement_ids": [TID],
        "privacy": {"location": {"mode": mode, "k": 3}},
        "geo": {"database": str(db_path)},
        **extra,
    }, env={})
    reps = Representatives(load_or_build(db_path, tmp_path / "cache") if ready else None)
    return Pipeline(config, Pseudonymizer(MemoryState(), bits=32, rotation=86400),
                    geo=GeoDatabase(db_path), representatives=reps, cells=cells)


async def send(p: Pipeline, address: str, cid: str = "111.222") -> tuple[dict[str, str], str]:
    query = urlsplit(HIT["url"]).query
    query = "&".join(f"{k}={v}" for k, v in parse_qsl(query) if k != "cid") + f"&cid={cid}"
    outcome = await p.process(IncomingRequest(query=query, user_agent=FIREFOX, cookie=GRANTED,
                                              client_ip=ip(address)))
    assert outcome.forward and outcome.outbound is not None, outcome.reason
    return dict(parse_qsl(outcome.outbound.query)), outcome.location_level


@pytest.mark.parametrize("visitor", ["81.2.69.160", "81.2.71.9", "2.24.7.7", "25.1.2.3"])
async def test_country_mode_sends_one_address_per_country(
        db_path: Path, tmp_path: Path, visitor: str) -> None:
    p = make_pipeline(db_path, "country", tmp_path)
    params, level = await send(p, visitor)
    assert (params["_uip"], level) == ("25.0.0.0", "country")
    assert country_of(db_path, params["_uip"]) == "GB"


async def test_country_mode_omits_what_it_cannot_place(db_path: Path, tmp_path: Path) -> None:
    p = make_pipeline(db_path, "country", tmp_path)
    for visitor in ("10.9.8.7", "5.1.2.3"):  # a miss, an anonymous proxy
        params, level = await send(p, visitor)
        assert "_uip" not in params and level == "omitted"


async def test_until_the_index_is_ready_nothing_is_sent(db_path: Path, tmp_path: Path) -> None:
    for mode in ("country", "mesh"):
        p = make_pipeline(db_path, mode, tmp_path, ready=False)
        for n in range(5):
            params, level = await send(p, "81.2.69.160", cid=f"{n}.1")
            assert "_uip" not in params and level == "omitted"


async def test_mesh_uses_the_finest_cell_with_k_visitors(db_path: Path, tmp_path: Path) -> None:
    p = make_pipeline(db_path, "mesh", tmp_path)  # k = 3
    seen = []
    # Visitors from three GB cities, then London fills up.
    for address, cid in [("2.24.1.1", "1.1"), ("81.2.69.5", "2.2"), ("25.3.3.3", "3.3"),
                         ("81.2.69.6", "4.4"), ("81.2.69.6", "4.4"), ("81.2.70.7", "5.5")]:
        params, level = await send(p, address, cid)
        seen.append((params.get("_uip"), level))
    assert seen == [
        (None, "omitted"),  # 1 visitor in GB
        (None, "omitted"),  # 2
        ("25.0.0.0", "country"),  # 3 in GB (only 2 in England, 1 in London)
        ("31.48.0.0", "region"),  # 3 in England: Leeds, London, London
        ("31.48.0.0", "region"),  # the same visitor again counts once
        ("81.2.70.0", "city"),  # the third distinct Londoner
    ]


async def test_mesh_never_sends_a_city_below_k_whatever_the_order(
        db_path: Path, tmp_path: Path) -> None:
    p = make_pipeline(db_path, "mesh", tmp_path)
    levels = [(await send(p, "81.2.69.1", cid="7.7"))[1] for _ in range(10)]
    assert set(levels) == {"omitted"}  # one visitor, however many beacons


def test_memory_counter_window_and_bound() -> None:
    now = [1000.0]
    counter = MemoryCellCounter(k=2, window=100, clock=lambda: now[0], max_cells=3)
    assert counter.observe(["city:1", "country:GB"], "a") == -1
    assert counter.observe(["city:1", "country:GB"], "b") == 0
    now[0] += 60
    assert counter.observe(["city:2", "country:GB"], "c") == 1  # GB: b, c in the window
    now[0] += 50  # a and b are now older than the window
    assert counter.observe(["city:1", "country:GB"], "d") == 1  # city 1: only d is recent
    for cell in ("city:3", "city:4", "city:5"):
        counter.observe([cell], "x")
    assert len(counter) == 3  # bounded: the least recently seen cells are forgotten


def test_memory_counter_forgets_the_least_recently_seen_cell() -> None:
    counter = MemoryCellCounter(k=2, window=100, clock=lambda: 1000.0, max_cells=2)
    assert counter.observe(["country:GB"], "a") == -1
    assert counter.observe(["country:GB"], "b") == 0
    counter.observe(["city:1"], "a")  # tracked: GB (oldest), city 1
    counter.observe(["country:GB"], "c")  # GB seen again: city 1 is now the least recent
    counter.observe(["city:2"], "a")  # full: city 1 is forgotten, the busy GB cell is not
    assert counter.observe(["country:GB"], "d") == 0  # still open: c and d
    assert counter.observe(["city:1"], "b") == -1  # forgotten: b alone


async def test_mesh_counts_are_shared_through_redis(redis_url: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    await client.flushdb()
    try:
        now = [1_000_000.0]
        a = RedisCellCounter(client, k=3, window=3600, clock=lambda: now[0])
        b = RedisCellCounter(client, k=3, window=3600, clock=lambda: now[0])
        cells = (f"city:{LONDON}", "region:GB-ENG", "country:GB")
        assert a.observe(cells, "v1") == -1
        assert a.observe(cells, "v2") == -1
        await a.flush()
        assert b.observe(cells, "v3") == -1  # b alone has seen one visitor
        await b.flush()  # shared count: three
        assert b.observe(cells, "v3") == 0
        await a.flush()
        assert a.observe(cells, "v1") == -1  # a re-counts London only when it is seen again
        now[0] += 1  # and at most once a second
        await a.flush()
        assert a.observe(cells, "v1") == 0
        keys = [k.decode() async for k in client.scan_iter("*mesh*")]
        assert keys and all(k.startswith("{analytics_proxy}:mesh:") for k in keys)
        ttls = [await client.ttl(k) for k in keys]
        assert all(0 < ttl <= 3600 + 600 for ttl in ttls)
        # Past the window, the shared count starts again from nothing.
        now[0] += 3600 + 601
        c = RedisCellCounter(client, k=3, window=3600, clock=lambda: now[0])
        c.observe(cells, "v4")
        await c.flush()
        assert c.observe(cells, "v4") == -1
    finally:
        await client.aclose()


async def test_mesh_bookkeeping_per_cell_stays_under_max_cells(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cells seen once and never again: what is remembered of their shared counts is cut
    back to MAX_CELLS at every flush, and nothing waits to be sent after one."""
    from redis.asyncio import Redis

    monkeypatch.setattr("proxy.location.mesh.MAX_CELLS", 50)
    client = Redis.from_url(redis_url)
    try:
        now = [1_000_000.0]
        counter = RedisCellCounter(client, k=1, window=3600, clock=lambda: now[0])
        for round_ in range(4):
            for n in range(100):
                counter.observe((f"city:{round_ * 100 + n}",), "v1")
            await counter.flush()
            now[0] += 1
            assert len(counter._checked) <= 50 and len(counter._open) <= 50
            assert not counter._pending
    finally:
        await client.aclose()


async def test_mesh_counter_without_redis_falls_back_to_local_counts() -> None:
    from redis.asyncio import Redis

    client = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    counter = RedisCellCounter(client, k=2, window=3600)
    cells = ("country:GB",)
    assert counter.observe(cells, "a") == -1
    with pytest.raises(Exception):  # noqa: B017 (the run loop catches and backs off)
        await counter.flush()
    assert counter.observe(cells, "b") == 0  # this replica's own count still opens the cell
    await client.aclose()


# --- internal traffic -----------------------------------------------------------------------

@pytest.mark.parametrize(("address", "tt"), [
    ("198.51.100.77", "internal"),
    ("2001:db8:ff::1", "internal"),
    ("81.2.69.160", None),
])
async def test_internal_networks_are_marked_before_the_address_is_discarded(
        db_path: Path, tmp_path: Path, address: str, tt: str | None) -> None:
    p = make_pipeline(db_path, "country", tmp_path,
                      internal_traffic={"networks": ["198.51.100.0/24", "2001:db8:ff::/48"]})
    params, _ = await send(p, address)
    assert params.get("tt") == tt
    assert address not in json.dumps(params)


async def test_a_tt_sent_by_the_page_is_not_forwarded(db_path: Path, tmp_path: Path) -> None:
    p = make_pipeline(db_path, "omit", tmp_path)
    query = urlsplit(HIT["url"]).query + "&tt=internal"
    outcome = await p.process(IncomingRequest(query=query, user_agent=FIREFOX, cookie=GRANTED,
                                              client_ip=ip("81.2.69.160")))
    assert outcome.outbound is not None
    assert "tt" not in dict(parse_qsl(outcome.outbound.query))


# --- explain ------------------------------------------------------------------------------

async def test_explain_shows_the_location_sent(db_path: Path, tmp_path: Path) -> None:
    config = from_mapping({
        "measurement_ids": [TID],
        "privacy": {"location": {"mode": "country"}},
        "geo": {"database": str(db_path), "index_cache": str(tmp_path / "cache")},
    }, env={})
    explainer = Explainer(config)
    outcome = await explainer.explain(BeaconInput(
        url=HIT["url"], client_ip="81.2.69.160", cookie=GRANTED,
        headers={"User-Agent": FIREFOX}))
    result = explainer.to_json(outcome)
    assert result["location"]["sent"] == "25.0.0.0"
    assert result["location"]["level"] == "country"
    text = explainer.to_text(outcome)
    assert "place: GB-ENG   regime: opt_in" in text
    assert "location sent: 25.0.0.0 (country: " in text


# --- the real GeoLite2 City database ----------------------------------------------------

GEOLITE2_CASES = [("81.2.69.160", "GB", "opt_in"), ("8.8.8.8", "US", "opt_out"),
                  ("216.160.83.56", "US", "opt_out")]


@pytest.fixture(scope="module")
def geolite2_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    import geolite2  # test extra: GeoLite2 City, 2018 data (shape and behaviour)

    path = Path(geolite2.__file__).parent / "_maxminddb_geolite2" / "GeoLite2-City.mmdb"
    cache = tmp_path_factory.mktemp("geo-index")
    load_or_build(path, cache)  # about 15 s: once for this module
    yield path, cache


@pytest.mark.parametrize(("visitor", "country", "regime"), GEOLITE2_CASES)
async def test_real_geolite2_country_mode(geolite2_index: tuple[Path, Path], visitor: str,
                                          country: str, regime: str) -> None:
    path, cache = geolite2_index
    config = from_mapping({
        "measurement_ids": [TID],
        "privacy": {"location": {"mode": "country"}},
        "geo": {"database": str(path), "index_cache": str(cache)},
    }, env={})
    explainer = Explainer(config)
    outcome = await explainer.explain(BeaconInput(
        url=HIT["url"], client_ip=visitor, cookie=GRANTED, headers={"User-Agent": FIREFOX}))
    result = explainer.to_json(outcome)
    assert result["place"]["country"] == country and result["regime"] == regime
    sent = result["location"]["sent"]
    assert sent is not None and result["location"]["level"] == "country"
    assert ip(sent) not in ipaddress.ip_network(f"{visitor}/24", strict=False)
    assert country_of(path, sent) == country
    # Every visitor of the country is sent the same address.
    assert sent == load_or_build(path, cache)[f"country:{country}"]


def test_real_geolite2_index_covers_every_country_found(
        geolite2_index: tuple[Path, Path]) -> None:
    path, cache = geolite2_index
    index = load_or_build(path, cache)
    countries = {k for k in index if k.startswith("country:")}
    assert len(countries) > 240
    with maxminddb.open_database(str(path)) as reader:
        for key in sorted(countries)[::10]:
            record: Any = reader.get(index[key])
            assert record["country"]["iso_code"] == key.partition(":")[2]


# --- the real server ------------------------------------------------------------------------

async def test_server_sends_the_representative_once_its_index_is_ready(
        aiohttp_client: Any, aiohttp_server: Any, db_path: Path, tmp_path: Path) -> None:
    from proxy.observe.metrics import Metrics
    from proxy.server.public import init_app
    from tests.capture import Capture
    from tests.server.test_server import proxy_config

    cap = Capture()
    url = str((await aiohttp_server(cap.app())).make_url("/g/collect"))
    config = proxy_config(url, privacy={"location": {"mode": "country"}},
                          geo={"database": str(db_path), "index_cache": str(tmp_path / "c")},
                          trusted_proxies=["127.0.0.1/32"])
    client = await aiohttp_client(init_app(config, Metrics()))
    headers = {"Cookie": GRANTED, "User-Agent": FIREFOX, "X-Forwarded-For": "81.2.69.160"}
    target = "/g/collect?" + urlsplit(HIT["url"]).query
    sent: list[str | None] = []
    for n in range(600):  # the child process builds the index meanwhile (a liveness bound)
        resp = await client.post(target, headers=headers)
        assert resp.status == 204
        hits = await cap.wait_for(n + 1)
        sent.append(dict(parse_qsl(hits[-1].query)).get("_uip"))
        if sent[-1] is not None:
            break
        await asyncio.sleep(0.05)
    # Before the index was ready nothing stood for the visitor; then the country's address.
    assert sent[-1] == "25.0.0.0"
    assert set(sent[:-1]) <= {None}
    assert all("81.2.69" not in hit.query for hit in cap.hits)


async def test_a_replaced_database_gets_a_new_index(db_path: Path, tmp_path: Path) -> None:
    import os

    db = GeoDatabase(db_path)
    reps = Representatives()
    cache = str(tmp_path / "cache")
    await reps.build(db.path, cache)
    assert reps.get("country:GB") == "25.0.0.0"
    rebuilt = asyncio.Event()

    async def on_reload() -> None:
        await reps.build(db.path, cache)
        rebuilt.set()

    watcher = asyncio.create_task(db.watch(interval=0.05, on_reload=on_reload))
    try:
        # geoipupdate writes a new file and renames it over the old one.
        new = build(tmp_path / "new.mmdb", {"25.0.0.0/12": {"country": {"iso_code": "IE"}},
                                            "26.0.0.0/8": {"country": {"iso_code": "GB"}}})
        os.replace(new, db_path)
        await asyncio.wait_for(rebuilt.wait(), 60)  # a liveness bound
    finally:
        watcher.cancel()
    assert reps.get("country:IE") == "25.0.0.0"
    assert reps.get("country:GB") == "26.0.0.0"
    db.close()
