"""The serving path's shortcuts (issue 13) against the plain path they stand for: each must
give exactly what the plain one gives, on the captures, the privacy corpora and generated
input, with its memories cold and warm."""

from __future__ import annotations

import ipaddress
import json
import random
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import from_mapping
from proxy.consent.gate import ConsentGate, cookies_read
from proxy.consent.registry import COMPILERS
from proxy.consent.verdict import ConsentInput, Verdict
from proxy.ingest.beacon import _SAFE, _decode, encode_sanitised, encode_value, parse
from proxy.ingest.client import ClientAddressResolver, parse_address
from proxy.ingest.cookies import parse_cookie_header
from proxy.location.regions import Regime
from proxy.observe.metrics import Metrics
from proxy.pipeline import IncomingRequest, Pipeline
from proxy.sanitize.policy import SHAPES, _plain_shape, _shaped, compile_policy
from proxy.sanitize.sanitizer import Sanitizer
from proxy.server import public
from proxy.server.protocol import Runner
from proxy.server.public import init_app, public_runner
from proxy.state.pseudonym import Pseudonymizer
from proxy.state.salts import MemoryState
from tests.capture import Capture
from tests.raw_http import exchange, http_request

FIXTURES = Path(__file__).parent / "fixtures"
HITS = [json.loads(line) for line in (FIXTURES / "ga4-hits.jsonl").read_text().splitlines()]
CONSENT = [
    json.loads(line) for line in (FIXTURES / "consent-cookies.jsonl").read_text().splitlines()
]
CORPORA = [
    json.loads(line)
    for name in ("privacy-planted.jsonl", "privacy-utility.jsonl")
    for line in (FIXTURES / name).read_text().splitlines()
]
UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0 "
      "Safari/537.36")


def _reference_decode(text: str) -> str:
    return unquote(text.replace("+", " "), errors="strict")


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(["a", "%", "2", "F", "f", "+", "%2F", "%c3%a9", "%e2%82", "é",
                                 "%7e", "%zz", "%4", "%41", "%ff", " ", "&"]), max_size=12))
def test_decode_is_unquote(pieces: list[str]) -> None:
    text = "".join(pieces)
    try:
        expected: str | type[Exception] = _reference_decode(text)
    except UnicodeDecodeError:
        expected = UnicodeDecodeError
    try:
        got: str | type[Exception] = _decode(text)
    except UnicodeDecodeError:
        got = UnicodeDecodeError
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_decode_is_unquote_on_any_text(text: str) -> None:
    escaped = quote(text, safe=_SAFE)
    assert _decode(escaped) == _reference_decode(escaped) == text


@settings(max_examples=500, deadline=None)
@given(st.one_of(
    st.text(alphabet="0123456789.", max_size=16),
    st.lists(st.sampled_from(["0", "1", "01", "255", "256", "25", "99", "\u0661", ".", " ", "::1"]),
             max_size=6).map("".join),
))
def test_fast_address_parse_is_ipaddress(text: str) -> None:
    try:
        expected: object = ipaddress.ip_address(text)
    except ValueError:
        expected = None
    got = parse_address(text)
    assert got == expected and type(got) is type(expected)


def test_trusted_peers_are_remembered_clients_are_not() -> None:
    resolver = ClientAddressResolver(["127.0.0.1/32"])
    lines = CIMultiDictProxy(CIMultiDict({"X-Forwarded-For": "81.2.69.160"}))
    for _ in range(2):  # cold, then remembered
        assert resolver.resolve("127.0.0.1", lines) == ipaddress.ip_address("81.2.69.160")
        assert resolver.resolve("127.0.0.1", None) == ipaddress.ip_address("127.0.0.1")
        assert resolver.resolve("203.0.113.9", lines) == ipaddress.ip_address("203.0.113.9")
    assert list(resolver._trusted_peers) == ["127.0.0.1"]


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_plain_shapes_pass_only_what_the_shape_keeps_unencoded(name: str) -> None:
    shaped, plain = _shaped(SHAPES[name]), _plain_shape(SHAPES[name])
    rng = random.Random(name)
    alphabet = "0123456789abcxyzABCGXlr-_.~%+ @/:1"
    for _ in range(3000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        if plain(value):
            assert shaped(value, None) == value  # type: ignore[arg-type]
            assert encode_value(value) == value


def _consent_jars() -> list[dict[str, list[str]]]:
    jars = [parse_cookie_header(case["cookie"]) for case in CONSENT if case.get("cookie")]
    jars.append({})
    jars.append({"_ga": ["GA1.1.1.2"], "analytics_consent": ["denied"]})
    return jars


@pytest.mark.parametrize("profile", ["all", "one-event", "two-events"])
def test_gate_asks_what_every_source_would_say(profile: str) -> None:
    gate = ConsentGate(from_mapping({"measurement_ids": ["G-X1234"]}, env={}).consent)
    cases: dict[str, list[dict[str, str]]] = {
        "all": [{"gcs": "G111", "gcd": "13r3r3r3r5"}],
        "one-event": [{}],
        "two-events": [{"gcs": "G101"}, {"gcs": "G100"}],
    }
    events = cases[profile]
    for jar in _consent_jars():
        inp = ConsentInput(jar, events, 1_780_000_000.0)
        for gpc in (False, True):
            for regime in Regime:
                assert gate.decide(inp, gpc=gpc, dnt=False, regime=regime) == gate.decide_all(
                    inp, gpc=gpc, dnt=False, regime=regime)


def test_a_source_without_its_cookie_abstains() -> None:
    """What the gate's shortcut rests on: every cookie source abstains when none of the
    cookies it reads is on the request, whatever else is."""
    others = {"_ga": ["GA1.1.1.2"], "session": ["x"], "analytics_consent": ["granted"]}
    for options_type, compile_source in COMPILERS.items():
        options = options_type()
        reads = cookies_read(options)
        if reads is None:
            continue
        names, prefixes = reads
        jar = {name: values for name, values in others.items()
               if name not in names and not name.startswith(prefixes)}
        for case in CONSENT:
            for name, values in parse_cookie_header(case.get("cookie") or "").items():
                if name not in names and not name.startswith(prefixes):
                    jar.setdefault(name, values)
        verdict = compile_source(options)(ConsentInput(jar, [{}], 1_780_000_000.0))
        assert verdict is Verdict.ABSTAIN, options_type


def _pipeline(event_params: list[str], profile: str) -> Pipeline:
    config = from_mapping(
        {"measurement_ids": sorted({urlsplit(h["url"]).query.split("tid=")[1].split("&")[0]
                                    for h in HITS} | {"G-TEST1234"}),
         "privacy": {"profile": profile, "event_params": event_params,
                     "user_properties": ["tier"]},
         "rate_limit": {"per_network": 0}},
        env={},
    )
    return Pipeline(config, Pseudonymizer(MemoryState(), bits=32, rotation=86400))


def _requests() -> list[IncomingRequest]:
    requests = []
    for hit in HITS:
        requests.append(IncomingRequest(
            query=urlsplit(hit["url"]).query, body=(hit.get("body") or "").encode(),
            cookie="analytics_consent=granted", user_agent=UA,
            client_ip=ipaddress.ip_address("81.2.69.160"), country="GB"))
    for case in CORPORA:
        value = quote(case["value"], safe=_SAFE)
        query = (f"v=2&tid=G-TEST1234&cid=1.2&dl=https%3A%2F%2Fshop.example.com%2F&en=page_view"
                 f"&dt={value}&dr={value}&ep.plan={value}")
        requests.append(IncomingRequest(
            query=query, body=f"en=scroll&ep.link_url={value}\nen=click&dl={value}".encode(),
            cookie="analytics_consent=granted", user_agent=UA,
            client_ip=ipaddress.ip_address("81.2.69.160"), country="GB"))
    return requests


@pytest.mark.parametrize("profile", ["strict", "balanced"])
async def test_serving_path_sends_what_the_traced_path_sends(profile: str) -> None:
    """Untraced (flat table, memories, encoding as it goes) and traced (the rule table, the
    dicts encoded afterwards) send the same bytes, memories cold and then warm."""
    pipeline = _pipeline(["plan", "link_url"], profile)
    requests = _requests()
    for _ in range(2):
        for request in requests:
            fast = await pipeline.process(request)
            traced = await pipeline.process(request, trace=True)
            assert (fast.forward, fast.reason) == (traced.forward, traced.reason)
            assert fast.outbound == traced.outbound, request.query
            if fast.outbound is not None:
                parsed = parse(fast.outbound.query, fast.outbound.body)
                assert encode_sanitised(parsed.shared) == fast.outbound.query


def test_sanitised_encoding_is_the_dicts_encoding() -> None:
    config = from_mapping({"measurement_ids": ["G-TEST1234"],
                           "privacy": {"event_params": ["plan"]}}, env={})
    sanitizer = Sanitizer(compile_policy(config.privacy))
    for request in _requests():
        beacon = parse(request.query, request.body, decoded=sanitizer.decoded)
        for _ in range(2):
            clean = sanitizer.sanitize(beacon, lambda cid: "1.2", {"_uip": "81.2.69.0"})
            assert clean.query == encode_sanitised(clean.shared)
            assert clean.body == "\n".join(encode_sanitised(line) for line in clean.lines)
    for encoded, value in sanitizer.decoded.items():
        assert _decode(encoded) == value


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["dt", "dl", "dr", "en", "ep.plan", "ul", "_p", "gcs",
                                        "cu", "sr", "uap", "_z", "x"]),
                       st.text(max_size=40), max_size=8))
async def test_generated_values_fast_and_traced_agree(params: dict[str, str]) -> None:
    pipeline = PIPELINE
    query = "v=2&tid=G-TEST1234&cid=1.2&" + "&".join(
        f"{name}={quote(value, safe=_SAFE)}" for name, value in params.items())
    request = IncomingRequest(query=query, cookie="analytics_consent=granted", user_agent=UA,
                              client_ip=ipaddress.ip_address("81.2.69.160"), country="GB")
    for _ in range(2):
        fast = await pipeline.process(request)
        traced = await pipeline.process(request, trace=True)
        assert fast.outbound == traced.outbound


PIPELINE = _pipeline(["plan"], "balanced")


BEACON = "/g/collect?v=2&tid=G-TEST1234&cid=1.2&gcs=G111&en=page_view&dl=https%3A%2F%2Fa.example%2F"
WIRE = [
    # kept-alive HTTP/1.1: the prepared head
    http_request(BEACON.encode(), b"Cookie: analytics_consent=granted", method=b"POST"),
    http_request(BEACON.encode(), b"Cookie: analytics_consent=granted"),
    # aiohttp's own path: an Origin (CORS headers), HTTP/1.0, a closing request, a drop
    http_request(BEACON.encode(), b"Origin: https://a.example"),
    http_request(BEACON.encode().replace(b"tid=G-TEST1234", b"tid=G-OTHER999")),
    BEACON.encode().join([b"GET ", b" HTTP/1.0\r\nHost: proxy.test\r\n\r\n"]),
]


def _heads(answer: bytes) -> list[bytes]:
    """Each answer's head, its Date line blanked."""
    heads = [head for head in answer.split(b"\r\n\r\n") if head]
    return [re.sub(rb"Date: [^\r]+", b"Date: -", head) for head in heads]


async def _answers(app: web.Application, runner_of: Any) -> list[list[bytes]]:
    runner = runner_of(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        answers = []
        for wire in WIRE:
            closing = b"" if b"HTTP/1.0" in wire else http_request(
                b"/healthz", b"Connection: close")
            answers.append(_heads((await exchange(port, wire + closing))[1]))
        # Several beacons on one connection.
        answers.append(_heads((await exchange(port, WIRE[0], WIRE[1], WIRE[0], http_request(
            b"/healthz", b"Connection: close")))[1]))
        return answers
    finally:
        await runner.cleanup()


async def test_collect_answers_as_aiohttp_would(aiohttp_server: Any) -> None:
    """The fast route (no router, no middleware chain) and the prepared 204 head give the
    bytes that the routed application answering with aiohttp's own Response gives."""
    upstream = await aiohttp_server(Capture().app())
    config = from_mapping({"measurement_ids": ["G-TEST1234"],
                           "upstream": {"url": str(upstream.make_url("/g/collect"))}}, env={})

    class PlainResponse(web.Response):
        pass

    fast = await _answers(init_app(config, Metrics()), public_runner)
    with pytest.MonkeyPatch.context() as patch:
        # The routed application, answering with aiohttp's own Response throughout.
        patch.setattr(public, "_NoContent",
                      lambda: PlainResponse(status=204, headers={"Cache-Control": "no-store"}))
        plain = await _answers(init_app(config, Metrics()), Runner)  # routed
    assert fast == plain
    assert fast[0][0].startswith(b"HTTP/1.1 204 No Content\r\nCache-Control: no-store\r\n")
    assert fast[3][0].startswith(b"HTTP/1.1 204 No Content\r\n")  # dropped: 204 too
    assert fast[-1].count(fast[0][0]) == 3  # one connection, three beacons
