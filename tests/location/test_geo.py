"""Geo lookup at the proxy: small MaxMind DBs built for exact cases, and real GeoLite2 City."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from proxy.config import ConfigError, from_mapping
from proxy.location.geo import UNKNOWN, GeoDatabase, Place
from proxy.observe.explain import BeaconInput, Explainer
from proxy.pipeline import IncomingRequest, Pipeline
from proxy.state.pseudonym import Pseudonymizer
from proxy.state.salts import MemoryState
from tests.conftest import GA4_HITS

HIT = next(h for h in GA4_HITS if h["id"] == "TV-04")
TID = "G-18JR3Q8PJ8"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"

NETWORKS: dict[str, dict[str, Any]] = {
    "81.2.69.0/24": {"country": {"iso_code": "GB"}, "subdivisions": [{"iso_code": "ENG"}]},
    "203.0.113.0/24": {"country": {"iso_code": "US"}, "subdivisions": [{"iso_code": "CA"}]},
    "198.51.100.0/25": {"country": {"iso_code": "US"}, "subdivisions": [{"iso_code": "TX"}]},
    "198.51.100.128/25": {"country": {"iso_code": "US"}, "traits": {"is_anonymous_proxy": True}},
    "192.0.2.0/24": {"registered_country": {"iso_code": "FR"}, "country": {"iso_code": "BR"}},
    "2001:db8::/32": {"country": {"iso_code": "DE"}},
}


def build(path: Path, networks: dict[str, dict[str, Any]], ip_version: int = 6) -> Path:
    writer = MMDBWriter(ip_version=ip_version, ipv4_compatible=ip_version == 6,
                        database_type="GeoLite2-City")
    for network, record in networks.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return build(tmp_path / "geo.mmdb", NETWORKS)


def ip(text: str) -> Any:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(("address", "place"), [
    ("81.2.69.160", Place("GB", "ENG")),
    ("203.0.113.9", Place("US", "CA")),
    ("198.51.100.7", Place("US", "TX")),
    ("198.51.100.200", UNKNOWN),  # an anonymous proxy's location is not the visitor's
    ("192.0.2.1", Place("BR", None)),  # where the address is, not where it is registered
    ("2001:db8:1::1", Place("DE", None)),
    ("10.1.2.3", UNKNOWN),  # a miss
    (None, UNKNOWN),
])
def test_lookup_ipv4_and_ipv6(db_path: Path, address: str | None, place: Place) -> None:
    db = GeoDatabase(db_path)
    assert db.lookup(ip(address) if address else None) == place
    assert db.mode in ("MODE_MMAP_EXT", "MODE_MMAP")


@pytest.mark.parametrize("content", [None, b"not a database at all"])
def test_missing_or_unreadable_file_is_a_clear_start_up_error(tmp_path: Path,
                                                               content: bytes | None) -> None:
    path = tmp_path / "geo.mmdb"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"geo\.database: cannot open"):
        GeoDatabase(path)


def test_replaced_file_is_reloaded_without_restart(db_path: Path, tmp_path: Path) -> None:
    db = GeoDatabase(db_path)
    assert db.lookup(ip("81.2.69.160")).country == "GB"
    assert not db.reload_if_replaced()  # unchanged
    # geoipupdate writes a new file and renames it over the old one.
    new = build(tmp_path / "geo.mmdb.new", {"81.2.69.0/24": {"country": {"iso_code": "IE"}}})
    os.replace(new, db_path)
    assert db.reload_if_replaced()
    assert db.lookup(ip("81.2.69.160")).country == "IE"


def test_a_broken_replacement_keeps_the_old_database(db_path: Path, tmp_path: Path) -> None:
    db = GeoDatabase(db_path)
    broken = tmp_path / "broken"
    broken.write_bytes(b"garbage")
    os.replace(broken, db_path)
    assert not db.reload_if_replaced()
    assert db.lookup(ip("81.2.69.160")).country == "GB"


def pipeline(db: GeoDatabase, **consent: Any) -> Pipeline:
    config = from_mapping({"measurement_ids": [TID], "consent": consent}, env={})
    return Pipeline(config, Pseudonymizer(MemoryState(), bits=32, rotation=86400), geo=db)


async def decide(p: Pipeline, address: str) -> tuple[bool, str, str | None]:
    outcome = await p.process(IncomingRequest(query=urlsplit(HIT["url"]).query,
                                              user_agent=FIREFOX, client_ip=ip(address)))
    return outcome.forward, outcome.reason, outcome.regime.value if outcome.regime else None


@pytest.mark.parametrize(("address", "expected"), [
    ("81.2.69.160", (False, "no_consent", "opt_in")),
    ("203.0.113.9", (True, "default", "opt_out")),
    ("198.51.100.200", (False, "no_consent", "unknown")),
    ("192.0.2.1", (False, "no_consent", "other")),
])
async def test_the_place_chooses_the_regime_when_no_signal_decides(
        db_path: Path, address: str, expected: tuple[bool, str, str]) -> None:
    assert await decide(pipeline(GeoDatabase(db_path)), address) == expected


async def test_a_subdivision_rule_overrides_its_country(db_path: Path) -> None:
    p = pipeline(GeoDatabase(db_path), regimes={"opt_in": ["EEA", "GB", "CH", "US-CA"],
                                                "opt_out": ["US"]})
    assert await decide(p, "203.0.113.9") == (False, "no_consent", "opt_in")  # California
    assert await decide(p, "198.51.100.7") == (True, "default", "opt_out")  # Texas


async def test_explain_shows_the_place_and_regime(db_path: Path) -> None:
    config = from_mapping({"measurement_ids": [TID], "geo": {"database": str(db_path)}}, env={})
    explainer = Explainer(config)
    outcome = await explainer.explain(BeaconInput(url=HIT["url"], client_ip="203.0.113.9",
                                                  headers={"User-Agent": FIREFOX}))
    result = explainer.to_json(outcome)
    assert result["place"] == {"country": "US", "region": "CA"}
    assert result["regime"] == "opt_out"
    assert "place: US-CA   regime: opt_out" in explainer.to_text(outcome)


def test_real_geolite2_city() -> None:
    import geolite2  # test extra: GeoLite2 City, 2018 data (shape and behaviour, not accuracy)

    path = Path(geolite2.__file__).parent / "_maxminddb_geolite2" / "GeoLite2-City.mmdb"
    db = GeoDatabase(path)
    gb = db.lookup(ip("81.2.69.160"))
    us = db.lookup(ip("8.8.8.8"))
    assert gb.country == "GB" and us.country == "US"
    config = from_mapping({"measurement_ids": [TID]}, env={})
    from proxy.location.regions import Regime, RegimeMap

    regimes = RegimeMap(config.consent.regimes.opt_in, config.consent.regimes.opt_out)
    assert regimes.regime(gb.country, gb.region) is Regime.OPT_IN
    assert regimes.regime(us.country, us.region) is Regime.OPT_OUT


def test_networks_the_database_splits_are_never_merged_by_the_cache(db_path: Path) -> None:
    db = GeoDatabase(db_path)
    for _ in range(2):  # the second round would come from the cache if it were wrong
        assert db.lookup(ip("198.51.100.7")) == Place("US", "TX")
        assert db.lookup(ip("198.51.100.200")) == UNKNOWN
        assert db.lookup(ip("81.2.69.1")) == Place("GB", "ENG")
        assert db.lookup(ip("81.2.69.254")) == Place("GB", "ENG")


def test_the_place_cache_holds_at_most_cache_size_networks(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("proxy.location.geo.CACHE_SIZE", 16)
    db = GeoDatabase(db_path)
    for n in range(200):  # 200 distinct /48s the database holds as one /32
        assert db.lookup(ip(f"2001:db8:{n:x}::1")) == Place("DE", None)
    assert len(db._places) == 16
