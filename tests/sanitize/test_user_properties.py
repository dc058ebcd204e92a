"""User properties (``up.*``, balanced profile, allow-listed) get the treatment event
parameters get: every planted value of the privacy corpus that an ``ep.`` text parameter
loses, an ``up.`` one loses too (URLs included: credentials, queries, identifiers in paths).
Judged by ``tests/oracle.py`` on what the pipeline would send, never by the scrubber."""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

import pytest

from proxy.config import from_mapping
from proxy.pipeline import IncomingRequest, Pipeline
from proxy.state.pseudonym import Pseudonymizer
from proxy.state.salts import MemoryState
from tests.conftest import load_jsonl
from tests.oracle import found_needles

TID = "G-TEST1234"
UA = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/125.0.6422.142 Safari/537.36")
# The planted values written into free-text event parameters, whatever their slot's name.
PLANTED = [e for e in load_jsonl("privacy-planted.jsonl")
           if e["family"].startswith("ep.")]


def pipeline() -> Pipeline:
    config = from_mapping({
        "measurement_ids": [TID],
        "privacy": {"profile": "balanced", "event_params": ["slot"], "user_properties": ["slot"]},
    }, env={})
    return Pipeline(config, Pseudonymizer(MemoryState(), bits=32, rotation=86400))


def forwarded(p: Pipeline, name: str, value: str) -> str:
    query = urlencode({"v": "2", "tid": TID, "cid": "1.2", "en": "page_view",
                       "dl": "https://www.example.com/", name: value})
    outcome = asyncio.run(p.process(IncomingRequest(
        query, cookie="analytics_consent=granted", user_agent=UA, country="DE")))
    assert outcome.forward, outcome.reason
    assert outcome.outbound is not None
    return outcome.outbound.query + "\n" + outcome.outbound.body


def test_the_corpus_has_event_parameter_plants() -> None:
    assert len(PLANTED) >= 50


@pytest.mark.parametrize("entry", PLANTED, ids=lambda e: e["id"])
def test_a_user_property_loses_what_an_event_parameter_loses(entry: dict[str, object]) -> None:
    p = pipeline()
    value, needles = str(entry["value"]), list(entry["needles"])  # type: ignore[call-overload]
    as_event = found_needles(forwarded(p, "ep.slot", value), needles)
    as_user = found_needles(forwarded(p, "up.slot", value), needles)
    assert set(as_user) <= set(as_event), (value, as_user)


def test_a_url_in_a_user_property_is_cut_like_a_page_url() -> None:
    sent = forwarded(pipeline(), "up.slot",
                     "https://jane.doe:s3cr3tpw@www.example.com/account/884213?email=jane@example.org")
    assert not found_needles(sent, ["s3cr3tpw", "jane.doe", "884213", "jane@example.org"]), sent
    assert "www.example.com" in sent  # the URL is kept, cut down, not dropped
