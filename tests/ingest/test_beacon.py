from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from proxy.ingest.beacon import MAX_BODY, MalformedBeacon, encode_body, encode_params, parse
from tests.conftest import GA4_HITS


@pytest.mark.parametrize("hit", GA4_HITS, ids=[h["id"] for h in GA4_HITS])
def test_every_captured_beacon_parses(hit: dict[str, str]) -> None:
    beacon = parse(urlsplit(hit["url"]).query, hit["body"].encode())
    assert beacon.tid.startswith("G-")
    assert all(event["v"] == "2" for event in beacon.events())


def test_single_event_beacon_is_its_query() -> None:
    beacon = parse("v=2&tid=G-AAAA1&en=page_view&cid=1.2")
    assert beacon.lines == []
    assert beacon.events() == [{"v": "2", "tid": "G-AAAA1", "en": "page_view", "cid": "1.2"}]


@pytest.mark.parametrize("body", [b"en=a&x=1\nen=b", b"en=a&x=1\r\nen=b", b"en=a&x=1\nen=b\n"])
def test_batched_body_splits_on_lf_and_crlf(body: bytes) -> None:
    beacon = parse("v=2&tid=G-AAAA1&x=0", body)
    assert [e["en"] for e in beacon.events()] == ["a", "b"]
    assert [e["x"] for e in beacon.events()] == ["1", "0"]  # the line wins over the query


def test_captured_batch_keeps_two_events() -> None:
    hit = next(h for h in GA4_HITS if h["body"])
    beacon = parse(urlsplit(hit["url"]).query, hit["body"].encode())
    assert [e["en"] for e in beacon.events()] == ["page_view", "scroll"]


def test_bare_flag_without_equals_is_kept_as_empty() -> None:
    assert parse("v=2&tid=G-AAAA1&richsstsse").shared["richsstsse"] == ""


@pytest.mark.parametrize(
    ("query", "body", "code"),
    [
        ("tid=G-AAAA1", b"", "no_v2"),
        ("v=1&tid=G-AAAA1", b"", "no_v2"),
        ("v=2", b"", "no_tid"),
        ("v=2&tid=", b"", "no_tid"),
        ("v=2&tid=G-AAAA1&dt=%ff", b"", "undecodable"),
        ("v=2&tid=G-AAAA1", b"en=x&dt=%fe%ff", "undecodable"),
        ("v=2&tid=G-AAAA1", b"\xff\xfe", "undecodable"),
        ("v=2&tid=G-AAAA1", b"en=x&tid=G-OTHER1", "mixed_tid"),
        ("v=2&tid=G-AAAA1", b"en=x&v=1", "no_v2"),
        ("v=2&tid=G-AAAA1", b"x" * (MAX_BODY + 1), "too_large"),
        ("v=2&tid=G-AAAA1", b"en=a\n" * 101, "too_many_events"),
    ],
)
def test_malformed_beacons_raise_with_a_reason_code(query: str, body: bytes, code: str) -> None:
    with pytest.raises(MalformedBeacon) as info:
        parse(query, body)
    assert str(info.value) == code


def test_encoding_uses_percent_twenty_and_one_line_per_event() -> None:
    assert encode_params({"dt": "a b&c", "en": "x"}) == "dt=a%20b%26c&en=x"
    assert encode_body([{"en": "a"}, {"en": "b"}]) == "en=a\nen=b"


def test_encoding_round_trips_through_the_parser() -> None:
    params = {"v": "2", "tid": "G-AAAA1", "dt": "Ünïcode & = + ~ / ?", "en": "page_view"}
    assert parse(encode_params(params)).shared == params
