"""The privacy audit trail: what it records, that it records no personal value, where it
stores (memory ring, capped Redis stream), that it never holds up a beacon, and
``analytics-proxy audit tail``."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlsplit

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from proxy.cli import main
from proxy.config import Config, from_mapping
from proxy.consent.gate import ConsentGate
from proxy.consent.verdict import Verdict
from proxy.ingest.client import parse_address, truncate
from proxy.location.regions import Regime
from proxy.observe.audit import (
    MEMO_SIZE,
    OTHER,
    STREAM_KEY,
    AuditTrail,
    MemoryAuditTrail,
    RecordBuilder,
    RedisAuditTrail,
    format_record,
    make_audit,
    query_tid,
)
from proxy.observe.metrics import Metrics
from proxy.pipeline import DROP_REASONS, IncomingRequest, Outcome, Pipeline
from proxy.sanitize.policy import (
    DROP_IDENTIFIER,
    DROP_NOT_ALLOW_LISTED,
    DROP_UNKNOWN,
    Action,
    compile_policy,
)
from proxy.sanitize.sanitizer import Change
from proxy.server.admin import init_admin_app
from proxy.server.keys import RESOLVER
from proxy.server.public import init_app
from proxy.state.pseudonym import Pseudonymizer
from proxy.state.salts import MemoryState
from tests.capture import Capture
from tests.conftest import CONSENT_CASES, GA4_HITS
from tests.redis_server import RedisServer, free_port
from tests.serve_process import ROOT, start_serve, wait_until_up

Clients = Callable[..., Awaitable[Any]]
TOKEN = "audit-t0ken"
UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/122.0.6261.69 Safari/537.36"
)
BOT_UA = "Googlebot/2.1 (+http://www.google.com/bot.html)"
GRANTED = "analytics_consent=granted; _ga=GA1.1.1141082648.1693483972; session=abc123"
TIDS = sorted(
    {urlsplit(h["url"]).query.split("tid=")[1].split("&")[0] for h in GA4_HITS} - {"G-XXXXX"}
    | {"G-TEST1234"}
)
BASE = next(h for h in GA4_HITS if h["id"] == "TV-04")
BASE_TID = urlsplit(BASE["url"]).query.split("tid=")[1].split("&")[0]
# Visitors' addresses, given to the proxy in a trusted X-Forwarded-For (the test client's
# socket peer is 127.0.0.1, trusted by default).
CLIENT_IPS = [
    "203.0.113.57",
    "198.51.100.23",
    "81.2.69.160",
    "192.0.2.201",
    "2001:db8:85a3:17::8a2e:370:7334",
    "2a02:c7f:1e4a:9900::5",
]
# Beacons built to leak through names and values: e-mails and an address as parameter
# names, event-parameter names carrying e-mails, a personal tid, and personal values in
# malformed, oversized and bot beacons, which are dropped before any sanitising.
CRAFTED = [
    ("POST", "v=2&tid=G-TEST1234&cid=555001.777002&john.doe%40example.com=1&en=page_view"
     "&ep.jane.roe%40example.org=x&ep.debug_mode=on&ep.alice%40example.net=1"
     "&198.51.100.77=yes&uid=carol%40example.com"
     "&dl=https%3A%2F%2Fwww.example.com%2Forder%2F88877766%3Femail%3Ddave%40example.com"
     "&dt=Invoice%20for%20erin%40example.com&dr=https%3A%2F%2Fmail.example.net%2F%3Fq%3Dsecret",
     "en=scroll&ep.frank%40example.com=2&epn.percent=90\nen=click&ep.debug_mode=grace%40x.io"),
    ("GET", "v=2&tid=heidi%40example.com&cid=555003.777004&en=page_view", ""),
    ("GET", "tid=G-TEST1234&cid=555005.777006&ivan%40example.com=1", ""),  # no v=2
    ("GET", "v=2&tid=G-TEST1234&cid=555007.777008&dt=%ff%fejudy", ""),  # undecodable
    ("POST", "v=2&tid=G-TEST1234&cid=555009.777010&ken%40example.com=1", "x" * 70_000),
]


@dataclass(repr=False)
class Sent:
    """One beacon as sent: what the trail must not contain comes from here. Its repr shows
    no value, so a failing test prints none either."""

    method: str
    query: str
    body: str
    headers: dict[str, str]
    client_ip: str
    params: list[tuple[str, str]] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"<{self.method} beacon, {len(self.params)} parameters>"


def split_params(text: str) -> list[tuple[str, str]]:
    pairs = []
    for line in text.replace("\r\n", "\n").split("\n"):
        for pair in line.split("&"):
            if pair:
                name, _, value = pair.partition("=")
                pairs.append((name, value))
    return pairs


def beacons() -> list[Sent]:
    """Every beacon of the shared fixtures, each consent case on a real captured hit, and
    the crafted ones; each from its own visitor address."""
    sent: list[tuple[str, str, str, dict[str, str]]] = []
    for hit in GA4_HITS:
        query = urlsplit(hit["url"]).query
        sent.append((hit["method"], query, hit["body"], {"Cookie": GRANTED}))
        sent.append((hit["method"], query, hit["body"], {}))  # no consent: dropped
    base_query = urlsplit(BASE["url"]).query
    for case in CONSENT_CASES:
        query = base_query + ("&" + case["query"] if case["query"] else "")
        headers = dict(case["headers"])
        if case["cookie"]:
            headers["Cookie"] = case["cookie"]
        sent.append(("POST", query, "", headers))
    for method, query, body in CRAFTED:
        sent.append((method, query, body, {"Cookie": GRANTED}))
    bot = urlsplit(BASE["url"]).query
    sent.append(("GET", bot, "", {"Cookie": GRANTED, "User-Agent": BOT_UA}))
    out = []
    for index, (method, query, body, headers) in enumerate(sent):
        ip = CLIENT_IPS[index % len(CLIENT_IPS)]
        full = {"User-Agent": UA, **headers, "X-Forwarded-For": ip}
        out.append(Sent(method, query, body, full, ip, split_params(query) + split_params(body)))
    return out


def vocabulary(config: Config) -> set[str]:
    """The audit's own codes: a parameter value equal to one (``pscdl=denied``) cannot be
    told apart from the code, and is no personal value."""
    policy = compile_policy(config.privacy, config.allowed_origins)
    return {
        *DROP_REASONS,
        *("granted", "implied", "default", "denied", "gpc", "dnt", "no_consent"),
        *(v.value for v in Verdict),
        *(a.value for a in Action),
        *(r.value for r in Regime),
        *(rule.name for rule in policy.table.values()),
        *(rule.name for rule in (DROP_IDENTIFIER, DROP_NOT_ALLOW_LISTED, DROP_UNKNOWN)),
        *ConsentGate(config.consent).source_names,
        "forwarded",
        "dropped",
    }


RECORD_KEYS = {"minute", "tid", "decision", "reason", "detail", "regime", "consent", "source",
               "verdict", "readings", "location", "events", "params", "scope", "name",
               "action", "rule", "count", "abstained"}


def personal_values(sent: list[Sent], config: Config) -> set[str]:
    """Addresses (and their networks), cookie values, header values, every parameter value
    (raw and decoded, and each ``~`` token of items), and every parameter name the policy
    does not know. Values under four characters (``v=2``, flags) are protocol constants that
    any digit in a record would match; every personal value is longer."""
    known = set(compile_policy(config.privacy, config.allowed_origins).table)
    values: set[str] = set()
    for beacon in sent:
        address = parse_address(beacon.client_ip)
        assert address is not None
        network = truncate(address)
        values |= {beacon.client_ip, str(address), network, address.exploded}
        if address.version == 4:
            values.add(network.rsplit(".", 1)[0] + ".")  # "203.0.113." of any /24 form
        else:
            values.add(network.rstrip(":"))  # "2001:db8:85a3" of the /48
        values |= set(beacon.headers.values())
        for part in beacon.headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            values |= {value, unquote_plus(value)}
        for name, value in beacon.params:
            decoded = unquote_plus(value, errors="replace")
            values |= {value, decoded, *decoded.split("~")}
            for form in (name, unquote_plus(name, errors="replace")):
                if form not in known:
                    values.add(form)
    # A value inside one of the record's fixed words ("allow" of not_allow_listed, "1234"
    # of the tid G-TEST1234) cannot be told apart from that word.
    words = vocabulary(config) | set(TIDS) | known | RECORD_KEYS | {OTHER}
    lower = {w.lower() for w in words}
    return {v for v in values if len(v) >= 4 and not any(v.lower() in w for w in lower)}


def leaks(records: list[dict[str, Any]], personal: set[str]) -> list[str]:
    """Personal values found anywhere in the records. The generated ``id`` and ``minute``
    are left out of the text searched (their digits would match numbers by chance) and
    checked for shape instead by ``assert_only_codes``."""
    texts = [
        json.dumps({k: v for k, v in r.items() if k not in ("id", "minute")}, ensure_ascii=False)
        for r in records
    ]
    text = "\n".join(texts)
    lower = text.lower()
    return sorted(v for v in personal if v in text or v.lower() in lower)


MINUTE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\dZ")
ID = re.compile(r"\d+(-\d+)?")
CODE = re.compile(r"[a-z0-9_-]{1,40}|event \d+")


def assert_only_codes(records: list[dict[str, Any]], config: Config) -> None:
    """Every string in a record is a code, a minute, an id, a configured tid, a name the
    policy knows, or the placeholder: nothing free-form, so nothing a visitor typed."""
    names = set(compile_policy(config.privacy, config.allowed_origins).table)

    def walk(value: Any, key: str) -> Iterator[tuple[str, str]]:
        if isinstance(value, dict):
            for k, v in value.items():
                yield from walk(k, "key")
                yield from walk(v, k)
        elif isinstance(value, list):
            for v in value:
                yield from walk(v, key)
        elif isinstance(value, str):
            yield key, value
        else:
            assert value is None or type(value) is int, f"{key} holds a non-code"

    for record in records:
        for key, text in walk(record, ""):
            ok = {
                "id": ID.fullmatch(text),
                "minute": MINUTE.fullmatch(text),
                "tid": text in TIDS or text == OTHER,
                "name": text in names or text == OTHER,
            }.get(key, CODE.fullmatch(text) or text == OTHER)
            assert ok, f"{key} holds a value that is not a code"


def audit_config(upstream: str, **overrides: Any) -> Config:
    data: dict[str, Any] = {
        "measurement_ids": TIDS,
        "upstream": {"url": upstream, "backoff_initial": 0.01, "backoff_max": 0.05,
                     "shutdown_deadline": 1},
        "admin": {"token": TOKEN},
        "privacy": {"event_params": ["debug_mode", "percent"]},
        "audit": {"sample": 1.0},
        "rate_limit": {"per_network": 0},
    }
    data.update(overrides)
    return from_mapping(data, env={})


@pytest.fixture
async def upstream(aiohttp_server: Any) -> str:
    server = await aiohttp_server(Capture().app())
    return str(server.make_url("/g/collect"))


async def send_all(client: TestClient, sent: list[Sent]) -> None:
    for beacon in sent:
        resp = await client.request(
            beacon.method, f"/g/collect?{beacon.query}", data=beacon.body,
            headers=beacon.headers,
        )
        assert resp.status in (204, 400, 413)  # never a 500


def count(metrics: Metrics, outcome: str) -> float:
    return metrics.registry.get_sample_value(
        "analytics_proxy_audit_records_total", {"outcome": outcome}
    ) or 0.0


async def settle(metrics: Metrics, records: int, outcome: str = "written") -> None:
    for _ in range(1000):  # a liveness bound for the background writer, not a speed check
        if count(metrics, outcome) >= records:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{records} audit records were not {outcome}")


def check_trail(records: list[dict[str, Any]], sent: list[Sent], config: Config) -> None:
    assert len(records) == len(sent)  # sample 1.0: every beacon has its record
    decisions = {r["decision"] for r in records}
    assert decisions == {"forwarded", "dropped"}
    forwarded = [r for r in records if r["decision"] == "forwarded"]
    assert all(r["params"] for r in forwarded)
    reasons = {r["reason"] for r in records}
    assert {"granted", "no_consent", "denied", "malformed", "too_large", "unknown_tid",
            "bot"} <= reasons
    # The crafted names are there, as placeholders only.
    crafted = next(r for r in forwarded if any(p["name"] == "ep.debug_mode" and
                                               p["scope"] == "event 2" for p in r["params"]))
    others = [p for p in crafted["params"] if p["name"] == OTHER]
    # john.doe@…, 198.51.100.77 (unknown); ep.jane.roe@…, ep.alice@…, ep.frank@… (not allowed)
    assert sum(p["count"] for p in others) == 5
    assert {p["rule"] for p in others} >= {"unknown", "not_allow_listed"}
    assert next(r for r in records if r["reason"] == "unknown_tid")["tid"] == OTHER
    personal = personal_values(sent, config)
    assert {"john.doe@example.com", "203.0.113.57", "203.0.113.", "555001.777002"} <= personal
    # The check can fail: the same records with one address planted in them do.
    planted = [*records, {"reason": "denied", "params": [{"name": "x 203.0.113.57"}]}]
    caught = leaks(planted, personal) == ["203.0.113.", "203.0.113.57"]
    assert caught, "the planted address was not found"
    found = len(leaks(records, personal))  # a count: the values themselves are not printed
    assert found == 0, f"{found} personal values in the audit records"
    assert_only_codes(records, config)


async def test_memory_trail_read_on_the_admin_port_holds_no_personal_value(
    aiohttp_client: Clients, upstream: str
) -> None:
    config = audit_config(upstream)
    metrics = Metrics()
    audit = make_audit(config, metrics)
    client = await aiohttp_client(init_app(config, metrics, audit=audit))
    admin = await aiohttp_client(init_admin_app(config, metrics, audit))
    sent = beacons()
    await send_all(client, sent)
    assert count(metrics, "written") == len(sent)
    resp = await admin.get("/audit?limit=1000", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200
    answer = await resp.json()
    assert answer["storage"] == "memory"
    check_trail(answer["records"], sent, config)


async def test_redis_trail_read_by_audit_tail_holds_no_personal_value(
    aiohttp_client: Clients, upstream: str, redis_url: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = audit_config(upstream, state={"redis_url": redis_url})
    metrics = Metrics()
    client = await aiohttp_client(init_app(config, metrics))
    sent = beacons()
    await send_all(client, sent)
    await settle(metrics, len(sent))
    path = tmp_path / "proxy.yaml"
    path.write_text(f"measurement_ids: [{TIDS[0]}]\nstate: {{redis_url: '{redis_url}'}}\n")
    capsys.readouterr()
    code = await asyncio.to_thread(
        main, ["audit", "tail", "--config", str(path), "--json", "--limit", "1000"]
    )
    out = capsys.readouterr().out
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    check_trail(records, sent, config)
    # The stream's ids date a record to the minute it was written, never to the millisecond.
    assert all(int(r["id"].split("-")[0]) % 60_000 == 0 for r in records)


async def test_every_drop_is_recorded_and_counted_even_with_sampling_off(
    aiohttp_client: Clients, upstream: str
) -> None:
    config = audit_config(upstream, audit={"sample": 0})
    metrics = Metrics()
    audit = make_audit(config, metrics)
    client = await aiohttp_client(init_app(config, metrics, audit=audit))
    await send_all(client, beacons())
    records = await audit.recent(1000)
    dropped = {  # every reason is exposed from the start: those that happened
        key[1]["reason"]: value
        for key, value in _samples(metrics, "analytics_proxy_beacons_dropped_total")
        if value
    }
    assert len(dropped) >= 6  # no_consent, denied, malformed, too_large, unknown_tid, bot
    assert sum(v for _, v in _samples(metrics, "analytics_proxy_beacons_accepted_total")) > 0
    # Exactly the dropped beacons are in the trail, reason for reason; no forwarded one.
    by_reason: dict[str, int] = {}
    for record in records:
        assert record["decision"] == "dropped" and record["params"] == []
        by_reason[record["reason"]] = by_reason.get(record["reason"], 0) + 1
    assert by_reason == dropped
    assert count(metrics, "written") == len(records) and count(metrics, "dropped") == 0


def _samples(metrics: Metrics, name: str) -> Iterator[tuple[tuple[str, dict[str, str]], float]]:
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                yield (sample.name, sample.labels), sample.value


def test_sampling_decision() -> None:
    def trail(sample: float) -> AuditTrail:
        return MemoryAuditTrail(audit_config("stdout", audit={"sample": sample}), Metrics())

    never, always, tenth = trail(0), trail(1), trail(0.1)
    assert not any(never.sample() for _ in range(1000))
    assert all(always.sample() for _ in range(1000))
    random.seed(5)
    hits = sum(tenth.sample() for _ in range(20_000))
    assert 1700 < hits < 2300  # 2,000 expected; the bounds are over 7 standard deviations


async def test_unsampled_forward_is_not_traced_nor_recorded() -> None:
    config = audit_config("stdout", audit={"sample": 0})
    trail = MemoryAuditTrail(config, Metrics())
    pipeline = Pipeline(config, Pseudonymizer(MemoryState(), bits=32, rotation=86400))
    query = urlsplit(BASE["url"]).query
    sampled = trail.sample()
    outcome = await pipeline.process(
        IncomingRequest(query=query, cookie=GRANTED, user_agent=UA), trace=sampled
    )
    assert outcome.forward and outcome.changes == ()
    trail.observe(outcome, query, sampled=sampled)
    assert trail.size == 0


@pytest.mark.parametrize(
    ("query", "tid"),
    [
        ("v=2&tid=G-TEST1234&cid=1.2", "G-TEST1234"),
        ("tid=G-TEST1234", "G-TEST1234"),
        ("v=2&xtid=G-TEST1234&tid=G-NOTOURS1", OTHER),
        ("v=2&tid=jane%40example.com", OTHER),
        ("v=2&cid=1.2", None),
    ],
)
def test_only_configured_measurement_ids_are_written(query: str, tid: str | None) -> None:
    assert RecordBuilder(audit_config("stdout")).tid(query) == tid
    assert query_tid("a=1&tid=x&b=2") == "x"


def test_memory_ring_keeps_the_newest_max_records() -> None:
    config = audit_config("stdout", audit={"sample": 1.0, "max_records": 5})
    metrics = Metrics()
    trail = MemoryAuditTrail(config, metrics)
    for index in range(12):
        trail.observe_drop("malformed", f"v=2&n={index}")
    assert trail.size == 5
    records = asyncio.run(trail.recent(100))
    assert [r["id"] for r in records] == ["8", "9", "10", "11", "12"]
    assert [r["id"] for r in asyncio.run(trail.recent(2))] == ["11", "12"]
    assert [r["id"] for r in asyncio.run(trail.after("9", 2))] == ["10", "11"]
    assert [r["id"] for r in asyncio.run(trail.after("1", 2))] == ["8", "9"]  # trimmed past
    assert asyncio.run(trail.after("12", 10)) == []
    assert count(metrics, "written") == 12


async def test_redis_stream_is_capped_near_max_records(redis_url: str) -> None:
    config = audit_config("stdout", audit={"sample": 1.0, "max_records": 50})
    metrics = Metrics()
    trail = RedisAuditTrail(config, metrics, redis_url)
    await trail.start()
    try:
        for index in range(1200):
            trail.observe_drop("malformed", f"v=2&n={index}")
        await trail.flush()
        client = aioredis.from_url(redis_url)
        length = await client.xlen(STREAM_KEY)
        await client.aclose()
        newest = await trail.recent(3)
    finally:
        await trail.close()
    # MAXLEN ~ trims whole stream nodes (100 entries by default): at most one node over.
    assert 50 <= length <= 50 + 100
    assert count(metrics, "written") == 1200
    ids = [r["id"] for r in newest]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    assert len(set(ids)) == 3


async def test_writers_behind_the_newest_minute_keep_ids_growing(redis_url: str) -> None:
    config = audit_config("stdout")
    client = aioredis.from_url(redis_url)
    # Another replica, its clock ahead, wrote in a later minute.
    await client.xadd(STREAM_KEY, {"r": "{}"}, id="99999999960000-4")
    trail = RedisAuditTrail(config, Metrics(), redis_url)
    await trail.start()
    try:
        trail.observe_drop("bot")
        trail.observe_drop("bot")
        await trail.flush()
        records = await trail.recent(10)
    finally:
        await trail.close()
        await client.aclose()
    assert [r["id"] for r in records][-2:] == ["99999999960000-5", "99999999960000-6"]


async def test_redis_down_beacons_answered_records_dropped_and_counted(
    aiohttp_client: Clients, upstream: str, own_redis: RedisServer
) -> None:
    config = audit_config(upstream, state={"redis_url": own_redis.url})
    metrics = Metrics()
    trail = make_audit(config, metrics)
    client = await aiohttp_client(init_app(config, metrics, audit=trail))
    admin = await aiohttp_client(init_admin_app(config, metrics, trail))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    sent = beacons()
    await send_all(client, sent[:3])
    await settle(metrics, 3)
    assert len((await (await admin.get("/audit", headers=auth)).json())["records"]) == 3
    own_redis.stop()
    await send_all(client, sent)  # every answer 204/400/413, none a 500
    await settle(metrics, len(sent), "dropped")
    assert count(metrics, "written") == 3
    assert count(metrics, "dropped") == len(sent)
    resp = await admin.get("/audit", headers=auth)
    assert resp.status == 503


class SilentRedis:
    """A socket that accepts and never answers: a Redis behind a network partition, until
    ``cut`` closes its connections and its port."""

    def __init__(self) -> None:
        self.held: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.held.append(writer)
            while await reader.read(4096):
                pass

        self.server = await asyncio.start_server(hold, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.held:
            writer.close()


@pytest.fixture
async def silent_redis() -> AsyncIterator[SilentRedis]:
    silent = SilentRedis()
    await silent.start()
    yield silent
    silent.cut()


async def test_an_unanswering_redis_never_holds_up_a_beacon(
    aiohttp_client: Clients, upstream: str, silent_redis: SilentRedis
) -> None:
    config = audit_config(upstream)
    metrics = Metrics()
    # A timeout far longer than the test: the write hangs until the partition is cut.
    hanging = aioredis.from_url(silent_redis.url, socket_timeout=600, retry=None)
    trail = RedisAuditTrail(config, metrics, silent_redis.url, client=hanging)
    client = await aiohttp_client(init_app(config, metrics, audit=trail))
    sent = beacons()
    await send_all(client, sent[:1])
    for _ in range(1000):  # until the writer is inside its round trip to the silent Redis
        if trail.pending == 0:
            break
        await asyncio.sleep(0.01)
    assert trail.pending == 0
    # While that write hangs, every beacon is answered.
    await send_all(client, sent[1:])
    assert count(metrics, "written") + count(metrics, "dropped") == 0
    assert trail.pending == len(sent) - 1
    silent_redis.cut()  # the write fails now: every record dropped, and counted
    await settle(metrics, len(sent), "dropped")
    assert count(metrics, "written") == 0


async def test_full_queue_drops_and_counts(redis_url: str) -> None:
    metrics = Metrics()
    trail = RedisAuditTrail(audit_config("stdout"), metrics, redis_url, queue_size=3)
    for _ in range(5):
        trail.observe_drop("bot")
    assert count(metrics, "dropped") == 2
    await trail.start()
    await trail.flush()
    await trail.close()
    assert count(metrics, "written") == 3


async def test_admin_audit_endpoint_guards_and_pages(aiohttp_client: Clients) -> None:
    config = audit_config("stdout")
    metrics = Metrics()
    trail = MemoryAuditTrail(config, metrics)
    for _ in range(4):
        trail.observe_drop("bot", "v=2&tid=G-TEST1234")
    admin = await aiohttp_client(init_admin_app(config, metrics, trail))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert (await admin.get("/audit")).status == 401
    for bad in ("limit=0", "limit=abc", "limit=100000", "after=1-2", "after=x"):
        assert (await admin.get(f"/audit?{bad}", headers=auth)).status == 400
    answer = await (await admin.get("/audit?limit=2&after=1", headers=auth)).json()
    assert [r["id"] for r in answer["records"]] == ["2", "3"]
    assert answer["newest"] == "4"
    assert answer["records"][0]["tid"] == "G-TEST1234"


async def test_record_of_a_sampled_beacon_names_what_happened_to_each_parameter() -> None:
    config = audit_config("stdout")
    trail = MemoryAuditTrail(config, Metrics())
    pipeline = Pipeline(config, Pseudonymizer(MemoryState(), bits=32, rotation=86400))
    _, query, body = CRAFTED[0]
    outcome = await pipeline.process(
        IncomingRequest(query=query, body=body.encode(), cookie=GRANTED, user_agent=UA,
                        client_ip=parse_address("203.0.113.57")),
        trace=True,
    )
    trail.observe(outcome, query, sampled=True)
    (record,) = await trail.recent(1)
    params = {(p["scope"], p["name"]): p for p in record["params"]}
    assert params["query", "cid"]["action"] == "replaced"
    assert params["query", "uid"]["action"] == "dropped"
    assert params["query", "dl"]["action"] == "generalised"
    assert "path_id" in params["query", "dl"]["detail"]
    assert params["query", "dt"]["action"] == "scrubbed"
    assert params["query", "dt"]["detail"] == ["email"]
    assert params["event 2", "ep.debug_mode"]["action"] == "scrubbed"
    assert params["query", "ep.debug_mode"]["action"] == "kept"
    assert record["consent"]["source"] == "bridge"
    assert not any({"before", "after"} & p.keys() for p in record["params"])
    text = format_record(record)
    first, *rest = text.splitlines()
    assert first.startswith(record["minute"] + "  G-TEST1234  FORWARD  granted by bridge")
    # Only the bridge cookie spoke; every other configured source abstained and is counted.
    assert record["consent"]["readings"] == {"bridge": "grant"}
    assert record["consent"]["abstained"] == len(ConsentGate(config.consent).source_names) - 1
    assert "    consent: bridge=grant" in rest
    assert any(line.split() == ["query", "replaced", "pseudonym:", "cid"] for line in rest)
    assert any("(other) x" in line and "not_allow_listed" in line for line in rest)


async def test_server_side_drops_are_recorded(
    aiohttp_client: Clients, upstream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = audit_config(upstream, audit={"sample": 0})
    metrics = Metrics()
    trail = MemoryAuditTrail(config, metrics)
    app = init_app(config, metrics, audit=trail)
    client = await aiohttp_client(app)

    def explode(peer: str | None, forwarded_for: str | None) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(app[RESOLVER], "resolve", explode)
    query = urlsplit(BASE["url"]).query
    assert (await client.post(f"/g/collect?{query}", headers={"User-Agent": UA})).status == 503
    big = await client.post(f"/g/collect?{query}", data="x" * 70_000, headers={"User-Agent": UA})
    assert big.status == 413
    reasons = [(r["reason"], r["tid"]) for r in await trail.recent(10)]
    assert reasons == [("internal_error", BASE_TID), ("too_large", BASE_TID)]


def test_location_level_is_recorded_for_the_record_and_for_uip() -> None:
    builder = RecordBuilder(audit_config("stdout"))
    outcome = Outcome(
        True, "granted", location_level="region",
        changes=(
            Change("query", "_uip", Action.FORCED, "proxy_set", None, "81.2.69.0"),
            Change("query", "dt", Action.SCRUBBED, "pii", "mail jane@example.com",
                   "mail [email]", ("email", "Jane Doe")),
        ),
    )
    record = builder.build(outcome, "v=2&tid=G-TEST1234", "forwarded")
    assert record["location"] == "region"
    uip, dt = record["params"]
    assert uip["detail"] == ["region"]
    assert dt["detail"] == ["email"]  # a detail that is not a code is left out
    assert "81.2.69" not in json.dumps(record) and "jane" not in json.dumps(record).lower()


# --- audit tail as a process ---------------------------------------------------------------


def send(port: int, query: str, cookie: str | None = None) -> None:
    headers = {"User-Agent": UA, **({"Cookie": cookie} if cookie else {})}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/g/collect?{query}", data=b"",
                                 headers=headers)
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 204


def tail_process(config: Path, *args: str, token: str | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_PROXY_")}
    if token:
        env["ANALYTICS_PROXY_ADMIN_TOKEN"] = token
    return subprocess.Popen(
        [sys.executable, "-m", "proxy", "audit", "tail", "--config", str(config), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )


def read_records(proc: subprocess.Popen[str], wanted: int) -> list[dict[str, Any]]:
    assert proc.stdout is not None
    return [json.loads(proc.stdout.readline()) for _ in range(wanted)]


def stream_holds(url: str, count: int, timeout: float = 10.0) -> None:
    async def wait() -> None:
        client = aioredis.from_url(url)
        try:
            for _ in range(int(timeout / 0.05)):
                if await client.xlen(STREAM_KEY) >= count:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"the audit stream did not reach {count} records")
        finally:
            await client.aclose()

    asyncio.run(wait())


@pytest.mark.parametrize("store", ["redis", "memory"])
def test_audit_tail_follow_prints_new_records(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    """With Redis, ``audit tail`` reads the stream (XREAD BLOCK); without, it follows the
    admin port of the running process, with the token from the environment."""
    common = f"measurement_ids: [{BASE_TID}]\nupstream: {{url: stdout, shutdown_grace: 0}}\n"
    if store == "redis":
        common += f"state: {{redis_url: '{request.getfixturevalue('redis_url')}'}}\n"
    proc, port, admin = start_serve(tmp_path, "proxy", common, admin_token=TOKEN)
    # The tail's own configuration: the admin port, no token (it comes from the environment).
    tail_config = tmp_path / "tail.yaml"
    tail_config.write_text(common + f"admin: {{port: {admin}}}\n")
    follower = None
    try:
        wait_until_up(port, "/readyz")
        query = urlsplit(BASE["url"]).query
        send(port, query)  # no consent: dropped, recorded
        if store == "redis":  # written to the stream by a background batch: wait for it
            stream_holds(request.getfixturevalue("redis_url"), 1)
        first = tail_process(tail_config, "--json", token=TOKEN)
        out, err = first.communicate(timeout=30)
        assert first.returncode == 0, err
        assert [json.loads(line)["reason"] for line in out.splitlines()] == ["no_consent"]
        follower = tail_process(tail_config, "--follow", "--json", "--limit", "1", token=TOKEN)
        (old,) = read_records(follower, 1)
        assert old["reason"] == "no_consent"
        send(port, query, cookie="analytics_consent=denied")
        send(port, "v=2&tid=G-NOTOURS1&cid=1.2")
        new = read_records(follower, 2)
        assert [r["reason"] for r in new] == ["denied", "unknown_tid"]
        assert new[0]["consent"]["source"] == "bridge"
        assert new[1]["tid"] == OTHER
    finally:
        if follower is not None:
            follower.send_signal(signal.SIGINT)
            follower.communicate(timeout=30)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert follower.returncode == 0


def test_audit_tail_says_when_it_cannot_read(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text(f"measurement_ids: [{BASE_TID}]\nadmin: {{port: {free_port()}}}\n")
    proc = tail_process(config)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "is the proxy running?" in err and out == ""


def test_codes_checked_are_remembered_up_to_memo_size() -> None:
    """Codes come from the pipeline, but a cap keeps the memo bounded whatever reaches it;
    past it, codes are still checked, just not remembered."""
    builder = RecordBuilder(audit_config("stdout"))
    for n in range(MEMO_SIZE + 1000):
        assert builder.code(f"code_{n}") == f"code_{n}"
        assert builder.scope(f"event {n % 1000}") == f"event {n % 1000}"
    assert len(builder._codes) == MEMO_SIZE
    assert len(builder._scopes) <= MEMO_SIZE
    assert builder.code("Not A Code") == OTHER
