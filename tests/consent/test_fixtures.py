"""Every captured cookie and query in tests/fixtures/consent-cookies.jsonl, source by source.

Each line is run through *every* registered source, so the table also proves that no source
misreads another CMP's cookie. The verdicts below were read off each value by hand per the
spec, then checked against the captured end-to-end ``expected`` decision.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import pytest

from proxy.consent.registry import COMPILERS, SourceOptions, source_type
from proxy.consent.verdict import ConsentInput, Verdict
from proxy.ingest.cookies import parse_cookie_header

GRANT, DENY, ABSTAIN = Verdict.GRANT, Verdict.DENY, Verdict.ABSTAIN

FIXTURES = Path(__file__).parent.parent / "fixtures" / "consent-cookies.jsonl"
NOW = 1_780_000_000.0  # May 2026, after every capture

# Sources not named for a fixture must abstain on it.
EXPECTED: dict[int, dict[str, Verdict]] = {
    1: {"cookiebot": GRANT},  # statistics:true, no implied marker
    2: {"cookiebot": DENY},  # statistics:false
    8: {"onetrust": DENY},  # C0002:0
    9: {"onetrust": GRANT},  # C0002:1, interactionCount=1
    14: {"cookieyes": GRANT},  # analytics:yes, action:yes
    15: {"cookieyes": DENY},  # analytics:no
    18: {"complianz": GRANT},  # cmplz_statistics=allow
    19: {"complianz": DENY},  # cmplz_statistics=deny
    20: {"klaro": DENY},  # google-analytics:false
    21: {"klaro": GRANT},  # googleAnalytics:true (configured name)
    26: {"iubenda": GRANT},  # purposes["4"]: true
    27: {},  # iubenda: only {"id":…}, and the -uspr cookie is not consent
    29: {"civic": DENY},  # analytics revoked; consentExpiry without a date is no expiry
    32: {"cookieconsent": GRANT},  # categories holds "analytics"
    38: {"tcf": GRANT},  # purposes 1-11, vendor 755 consented, policy 5
    39: {"consent_mode": GRANT},  # gcd analytics letter r
    40: {"consent_mode": DENY},  # gcd analytics letter p
    41: {},  # gcd analytics letter l: not set
    46: {},  # no signal at all
    52: {"bridge": GRANT},  # analytics_consent=granted
}

# Opt-in regime (consent-signals.md §7): there only GRANT forwards; IMPLIED and ABSTAIN drop.
OPT_IN = {
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT",
    "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
    "IS", "LI", "NO", "GB", "CH",
}


def load() -> list[dict[str, Any]]:
    return [json.loads(line) for line in FIXTURES.read_text().splitlines() if line.strip()]


LINES = load()


def consent_input(line: dict[str, Any]) -> ConsentInput:
    events = [dict(parse_qsl(line["query"]))] if line["query"] else []
    return ConsentInput(cookies=parse_cookie_header(line["cookie"]), events=events, now=NOW)


def verdicts(line: dict[str, Any]) -> dict[str, Verdict]:
    """Every registered source, defaults overridden by the line's ``config[<source>]``."""
    out = {}
    for cls in COMPILERS:
        name = source_type(cls())
        options = msgspec.convert({"type": name, **line["config"].get(name, {})}, SourceOptions)
        out[name] = COMPILERS[type(options)](options)(consent_input(line))
    return out


def test_every_fixture_line_has_an_expected_verdict() -> None:
    assert sorted(line["id"] for line in LINES) == sorted(EXPECTED)


def test_fixture_sources_and_configs_name_registered_sources() -> None:
    names = {source_type(cls()) for cls in COMPILERS}
    for line in LINES:
        assert line["source"] is None or line["source"] in names
        assert set(line["config"]) <= names


@pytest.mark.parametrize("line", LINES, ids=lambda line: f"id{line['id']}-{line['source']}")
def test_each_source_reads_the_captured_value_as_expected(line: dict[str, Any]) -> None:
    expected = {name: EXPECTED[line["id"]].get(name, ABSTAIN) for name in verdicts(line)}
    assert verdicts(line) == expected
    if line["source"] is not None:
        assert set(EXPECTED[line["id"]]) <= {line["source"]}


@pytest.mark.parametrize("line", LINES, ids=lambda line: f"id{line['id']}-{line['source']}")
def test_verdicts_agree_with_the_captured_decision(line: dict[str, Any]) -> None:
    # Under an opt-in regime with no privacy headers, forward happens exactly on a GRANT
    # with no DENY beside it; IMPLIED and ABSTAIN fall to the regime default, drop.
    assert line["country"] in OPT_IN
    assert not line["headers"]
    found = set(verdicts(line).values())
    forwards = GRANT in found and DENY not in found
    assert forwards is (line["expected"] == "forward")
