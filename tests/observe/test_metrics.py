"""What the proxy counts, over the real server and a loopback stand-in for Google: consent
decisions, parameters changed by rule, the location level, forwarding, and an exposition that
promtool accepts and whose labels are codes only."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from proxy.config import Config, from_mapping
from proxy.consent.registry import COMPILERS
from proxy.ingest.beacon import parse
from proxy.location import modes as location
from proxy.observe.metrics import (
    CONSENT_VERDICTS,
    LOCATION_LEVELS,
    LOST_REASONS,
    MP_OUTCOMES,
    NO_SOURCE,
    REGIMES,
    SPILL_REASONS,
    STATUS_CLASSES,
    TAG_FETCH_RESULTS,
    TAG_OUTCOMES,
    TRACKER_OUTCOMES,
    Metrics,
)
from proxy.pipeline import DROP_REASONS
from proxy.sanitize.policy import Action, compile_policy
from proxy.sanitize.sanitizer import COUNTED, UNLISTED_CACHE, Sanitizer
from proxy.server.admin import init_admin_app
from proxy.server.public import init_app
from proxy.tag.rewrite import RULES as REWRITE_RULES
from tests.capture import Capture
from tests.conftest import GA4_HITS

Clients = Callable[..., Awaitable[Any]]
GRANTED = "analytics_consent=granted"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/122.0.6261.69 Safari/537.36"
)
TIDS = sorted({urlsplit(h["url"]).query.split("tid=")[1].split("&")[0] for h in GA4_HITS}
              - {"G-XXXXX"})
FORWARDABLE = [h for h in GA4_HITS if "gcs=G100" not in h["url"] and "G-XXXXX&" not in h["url"]]
DENIED_ON_BEACON = next(h for h in GA4_HITS if "gcs=G100" in h["url"])
# Addresses in the real GeoLite2 City database (test extra, 2018 data).
GB_ADDRESS, US_ADDRESS = "81.2.69.160", "8.8.8.8"


def geolite2_path() -> str:
    import geolite2

    return str(Path(geolite2.__file__).parent / "_maxminddb_geolite2" / "GeoLite2-City.mmdb")


def config(url: str, upstream: dict[str, Any] | None = None, **overrides: Any) -> Config:
    data: dict[str, Any] = {
        "measurement_ids": TIDS,
        "upstream": {"url": url, "backoff_initial": 0.01, "backoff_max": 0.05, **(upstream or {})},
        **overrides,
    }
    return from_mapping(data, env={})


def target(hit: dict[str, str]) -> str:
    return "/g/collect?" + urlsplit(hit["url"]).query


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, (name, labels)  # every series is exposed from the start
    return value


@pytest.fixture
async def capture(aiohttp_server: Any) -> tuple[Capture, str]:
    cap = Capture()
    server = await aiohttp_server(cap.app())
    return cap, str(server.make_url("/g/collect"))


async def post(client: TestClient, hit: dict[str, str], **headers: str) -> int:
    resp = await client.request(hit["method"], target(hit), data=hit["body"],
                                headers={"User-Agent": CHROME, **headers})
    return int(resp.status)


# --- parameters changed, counted by the sanitiser ---------------------------------------------


def sanitiser(profile: str) -> Sanitizer:
    return Sanitizer(compile_policy(config("stdout", privacy={"profile": profile}).privacy))


def pseudonym(value: str) -> str:
    return "1.2"


@pytest.mark.parametrize("profile", ["strict", "balanced"])
@pytest.mark.parametrize("hit", GA4_HITS, ids=[h["id"] for h in GA4_HITS])
def test_the_serving_path_counts_what_the_trace_shows(hit: dict[str, str], profile: str) -> None:
    """Two paths, one written for speed and one for explain: per rule and action they must
    count the same, and exactly the trace's changes that are not kept or forced."""
    fast, traced = sanitiser(profile), sanitiser(profile)
    query = urlsplit(hit["url"]).query
    fast.sanitize(parse(query, hit["body"].encode()), pseudonym)
    changes = traced.sanitize(parse(query, hit["body"].encode()), pseudonym, trace=True).changes
    expected = Counter((c.rule, c.action.value) for c in changes if c.action in COUNTED)
    assert expected  # every captured beacon loses or changes something
    assert dict(fast.counts.take()) == dict(traced.counts.take()) == expected


def test_counts_move_into_the_counter_at_refresh_once() -> None:
    metrics, sanitizer = Metrics(), sanitiser("strict")
    metrics.track_parameters(sanitizer.counts)
    query = urlsplit(FORWARDABLE[0]["url"]).query
    labels = {"rule": "pseudonym", "action": "replaced"}
    assert sample(metrics, "analytics_proxy_parameters_changed_total", **labels) == 0
    for _ in range(3):
        sanitizer.sanitize(parse(query, b""), pseudonym)
    assert sample(metrics, "analytics_proxy_parameters_changed_total", **labels) == 0
    metrics.refresh()
    assert sample(metrics, "analytics_proxy_parameters_changed_total", **labels) == 3
    metrics.refresh()  # taken once: nothing is counted twice
    assert sample(metrics, "analytics_proxy_parameters_changed_total", **labels) == 3


def test_names_outside_the_table_are_counted_by_rule_with_bounded_memory() -> None:
    sanitizer = sanitiser("strict")
    names = ([f"zz{i}" for i in range(UNLISTED_CACHE)] + [f"sst.x{i}" for i in range(50)]
             + [f"ep.custom_{i}" for i in range(50)] + ["x" * 100])
    query = "v=2&tid=G-TEST1234&" + "&".join(f"{name}=1" for name in names)
    for _ in range(2):  # the second time partly from what the first remembered
        sanitizer.sanitize(parse(query, b""), pseudonym)
    assert dict(sanitizer.counts.take()) == {
        ("unknown", "dropped"): 2 * (UNLISTED_CACHE + 1),
        ("identifier", "dropped"): 2 * 50,
        ("not_allow_listed", "dropped"): 2 * 50,
    }
    assert len(sanitizer._dropped) <= len(sanitizer.policy.table) + UNLISTED_CACHE


def test_the_proxy_s_own_parameters_are_not_counted_as_changes() -> None:
    sanitizer = sanitiser("strict")
    query = urlsplit(FORWARDABLE[0]["url"]).query
    result = sanitizer.sanitize(parse(query, b""), pseudonym, {"_uip": "192.0.2.0"}, trace=True)
    assert any(c.action is Action.FORCED for c in result.changes)
    assert all(action != "forced" for (_, action), _ in sanitizer.counts.take())


# --- consent decisions and location, counted by the server ------------------------------------


async def test_consent_decisions_are_counted_by_source_verdict_and_regime(
    aiohttp_client: Clients, capture: tuple[Capture, str]
) -> None:
    cap, url = capture
    metrics = Metrics()
    client = await aiohttp_client(init_app(config(url, geo={"database": geolite2_path()}),
                                           metrics))
    hit = FORWARDABLE[0]
    assert await post(client, hit, Cookie=GRANTED, **{"X-Forwarded-For": GB_ADDRESS}) == 204
    assert await post(client, hit, Cookie=GRANTED, **{"X-Forwarded-For": US_ADDRESS}) == 204
    assert await post(client, DENIED_ON_BEACON, Cookie=GRANTED) == 204
    assert await post(client, hit, **{"X-Forwarded-For": GB_ADDRESS}) == 204
    assert await post(client, hit, **{"Sec-GPC": "1", "X-Forwarded-For": US_ADDRESS}) == 204
    assert await post(client, hit, **{"X-Forwarded-For": US_ADDRESS}) == 204
    await cap.wait_for(3)
    metrics.exposition()  # a scrape moves the per-beacon counts in

    def decisions(source: str, verdict: str) -> float:
        return sample(metrics, "analytics_proxy_consent_decisions_total",
                      source=source, verdict=verdict)

    def regimes(regime: str, verdict: str) -> float:
        return sample(metrics, "analytics_proxy_consent_regime_decisions_total",
                      regime=regime, verdict=verdict)

    assert decisions("bridge", "granted") == 2
    assert decisions("consent_mode", "denied") == 1
    assert decisions("gpc", "gpc") == 1
    assert decisions(NO_SOURCE, "no_consent") == 1  # opt-in region, no signal
    assert decisions(NO_SOURCE, "default") == 1  # opt-out region, no signal
    assert regimes("opt_in", "granted") == regimes("opt_out", "granted") == 1
    assert regimes("unknown", "denied") == 1  # loopback: no place
    assert regimes("opt_in", "no_consent") == regimes("opt_out", "default") == 1
    assert regimes("opt_out", "gpc") == 1
    # Every decision counted once in each counter, nothing else.
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    for name in ("analytics_proxy_consent_decisions", "analytics_proxy_consent_regime_decisions"):
        assert sum(s.value for s in families[name].samples) == 6


def test_every_consent_pair_a_configuration_can_produce_is_exposed_from_the_start() -> None:
    metrics = Metrics()
    sources = [options.__struct_config__.tag for options in COMPILERS]
    metrics.init_consent(str(s) for s in sources)
    for source in sources:
        for verdict in ("granted", "implied", "denied"):
            assert sample(metrics, "analytics_proxy_consent_decisions_total",
                          source=str(source), verdict=verdict) == 0
    for regime in REGIMES:
        for verdict in CONSENT_VERDICTS:
            assert sample(metrics, "analytics_proxy_consent_regime_decisions_total",
                          regime=regime, verdict=verdict) == 0


@pytest.mark.parametrize(("mode", "level"), [("truncated", "truncated"), ("omit", "omitted")])
async def test_the_location_level_of_each_accepted_beacon_is_counted(
    aiohttp_client: Clients, capture: tuple[Capture, str], mode: str, level: str
) -> None:
    cap, url = capture
    metrics = Metrics()
    cfg = config(url, privacy={"location": {"mode": mode}})
    client = await aiohttp_client(init_app(cfg, metrics))
    for hit in FORWARDABLE:
        assert await post(client, hit, Cookie=GRANTED, **{"X-Forwarded-For": US_ADDRESS}) == 204
    assert await post(client, FORWARDABLE[0]) == 204  # no consent: nothing sent, not counted
    await cap.wait_for(len(FORWARDABLE))
    metrics.exposition()
    counts = {name: sample(metrics, "analytics_proxy_location_level_total", level=name)
              for name in LOCATION_LEVELS}
    assert counts == {name: len(FORWARDABLE) if name == level else 0
                      for name in LOCATION_LEVELS}


def test_the_levels_exposed_are_the_location_modes_levels() -> None:
    assert LOCATION_LEVELS == location.LEVELS


def test_location_levels_are_fixed_codes() -> None:
    metrics = Metrics()
    for level in (*LOCATION_LEVELS, "country", ""):
        metrics.location(level)
    metrics.refresh()
    counts = {level: sample(metrics, "analytics_proxy_location_level_total", level=level)
              for level in LOCATION_LEVELS}
    assert counts == {"city": 1, "region": 1, "country": 2, "truncated": 1, "omitted": 1}


# --- forwarding ------------------------------------------------------------------------------


@pytest.mark.parametrize("client_kind", ["lean", "aiohttp"])
async def test_upstream_latency_status_classes_retries_and_events_forwarded(
    aiohttp_client: Clients, capture: tuple[Capture, str], client_kind: str
) -> None:
    cap, url = capture
    cap.fail_with = [503, 503]  # two retried answers before Google takes the first beacon
    metrics = Metrics()
    client = await aiohttp_client(init_app(
        # TV-11, the one captured batch, was sent to a placeholder measurement id.
        config(url, upstream={"client": client_kind, "max_connections": 1},
               measurement_ids=[*TIDS, "G-XXXXX"]), metrics))
    batched = next(h for h in GA4_HITS if h["id"] == "TV-11")
    events = len(parse(urlsplit(batched["url"]).query, batched["body"].encode()).lines)
    assert await post(client, batched, Cookie=GRANTED) == 204
    assert await post(client, FORWARDABLE[0], Cookie=GRANTED) == 204
    await cap.wait_for(2)
    for _ in range(100):  # the counters move just after Google's answer was read
        if sample(metrics, "analytics_proxy_beacons_forwarded_total") == 2:
            break
        await asyncio.sleep(0.01)
    assert sample(metrics, "analytics_proxy_upstream_requests_total", status_class="5xx") == 2
    assert sample(metrics, "analytics_proxy_upstream_requests_total", status_class="2xx") == 2
    assert sample(metrics, "analytics_proxy_forward_retries_total") == 2
    assert sample(metrics, "analytics_proxy_upstream_request_duration_seconds_count") == 4
    assert sample(metrics, "analytics_proxy_upstream_request_duration_seconds_sum") > 0
    assert sample(metrics, "analytics_proxy_upstream_request_duration_seconds_bucket",
                  le="+Inf") == 4
    assert events > 1
    assert sample(metrics, "analytics_proxy_events_forwarded_total") == events + 1


async def test_a_worker_that_is_not_primary_leaves_the_shared_outbox_to_worker_0(
    aiohttp_client: Clients, capture: tuple[Capture, str], redis_url: str
) -> None:
    _, url = capture
    cfg = config(url, state={"redis_url": redis_url})
    primary, other = Metrics(), Metrics(primary=False)
    for metrics in (primary, other):
        await aiohttp_client(init_app(cfg, metrics))
    assert sample(primary, "analytics_proxy_outbox_max_entries") == cfg.state.outbox_maxlen
    assert sample(other, "analytics_proxy_outbox_max_entries") == 0


# --- the exposition --------------------------------------------------------------------------


async def served_exposition(aiohttp_client: Clients, url: str) -> tuple[str, Metrics]:
    """The admin port's /metrics after every captured beacon went through, with and
    without consent, from a few places."""
    metrics = Metrics()
    cfg = config(url, geo={"database": geolite2_path()})
    client = await aiohttp_client(init_app(cfg, metrics))
    admin = await aiohttp_client(init_admin_app(cfg, metrics))
    for hit in GA4_HITS:
        for headers in ({"Cookie": GRANTED, "X-Forwarded-For": GB_ADDRESS},
                        {"X-Forwarded-For": US_ADDRESS, "DNT": "1"}, {}):
            await post(client, hit, **headers)
    await client.post("/g/collect?v=2", headers={"User-Agent": CHROME})
    resp = await admin.get("/metrics")
    return await resp.text(), metrics


async def test_promtool_finds_nothing_to_say_about_the_exposition(
    aiohttp_client: Clients, capture: tuple[Capture, str], promtool: str
) -> None:
    text, _ = await served_exposition(aiohttp_client, capture[1])
    assert "analytics_proxy_parameters_changed_total{" in text
    run = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0 and not run.stdout.strip() and not run.stderr.strip(), (
        run.stdout + run.stderr)


async def test_every_label_value_is_a_code_from_a_fixed_set(
    aiohttp_client: Clients, capture: tuple[Capture, str]
) -> None:
    text, _ = await served_exposition(aiohttp_client, capture[1])
    sources = {str(o.__struct_config__.tag) for o in COMPILERS} | {"gpc", "dnt", NO_SOURCE}
    rules = {r.name for r in sanitiser("strict").policy.table.values()} | {
        r.name for r in sanitiser("balanced").policy.table.values()} | {
        "unknown", "identifier", "not_allow_listed"} | {  # and the tag's rewrite rules
        r.name for r in REWRITE_RULES} | {"residue"}
    allowed: dict[str, set[str]] = {
        "reason": set(DROP_REASONS) | set(LOST_REASONS) | set(SPILL_REASONS)
        | {"granted", "implied", "default"},
        "source": sources | {"memory", "redis", "local"},
        "verdict": set(CONSENT_VERDICTS),
        "regime": set(REGIMES),
        "level": set(LOCATION_LEVELS),
        "rule": rules,
        "action": {a.value for a in COUNTED},
        "status_class": set(STATUS_CLASSES),
        "outcome": {"written", "dropped"} | set(TAG_OUTCOMES)  # audit records, tag requests
        | set(TRACKER_OUTCOMES) | set(MP_OUTCOMES),  # and Measurement Protocol requests
        "result": set(TAG_FETCH_RESULTS),
    }
    seen: set[str] = set()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            for label, value in s.labels.items():
                seen.add(label)
                if label == "le":
                    assert value == "+Inf" or float(value) > 0
                elif label == "version":
                    assert re.fullmatch(r"[0-9][0-9a-z.+-]*", value)
                else:
                    assert value in allowed[label], (family.name, label, value)
    assert set(allowed) <= seen
    # And no value of any beacon: no address, no client id.
    assert GB_ADDRESS not in text and US_ADDRESS not in text
    for hit in GA4_HITS:
        cid = dict(p.split("=", 1) for p in urlsplit(hit["url"]).query.split("&")
                   if "=" in p).get("cid")
        assert not cid or cid not in text


def test_the_metrics_the_issue_lists_are_exposed() -> None:
    names = {f.name for f in text_string_to_metric_families(Metrics().exposition().decode())}
    assert {f"analytics_proxy_{n}" for n in (
        "beacons_received", "events_received", "beacons_forwarded", "events_forwarded",
        "beacons_dropped", "consent_decisions", "consent_regime_decisions",
        "parameters_changed", "location_level", "upstream_requests",
        "upstream_request_duration_seconds", "queue_depth", "outbox_depth",
        "forward_retries", "salt_age_seconds", "salt_rotation_seconds",
        "geo_database_age_seconds", "build_info",
    )} <= names


async def test_the_serving_pipeline_s_sanitiser_is_the_one_counted(
    aiohttp_client: Clients, capture: tuple[Capture, str]
) -> None:
    cap, url = capture
    metrics = Metrics()
    client = await aiohttp_client(init_app(config(url), metrics))
    expected: Counter[tuple[str, str]] = Counter()
    for hit in FORWARDABLE:
        assert await post(client, hit, Cookie=GRANTED) == 204
        beacon = parse(urlsplit(hit["url"]).query, hit["body"].encode())
        changes = sanitiser("strict").sanitize(beacon, pseudonym, trace=True).changes
        expected.update((c.rule, c.action.value) for c in changes if c.action in COUNTED)
    await cap.wait_for(len(FORWARDABLE))
    text = metrics.exposition().decode()  # a scrape moves the counts in
    counted = {(s.labels["rule"], s.labels["action"]): s.value
               for f in text_string_to_metric_families(text)
               if f.name == "analytics_proxy_parameters_changed" for s in f.samples}
    assert {k: v for k, v in counted.items() if v} == expected
