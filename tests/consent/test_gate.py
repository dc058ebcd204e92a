"""The gate's combination rule (consent-signals.md §1) and every captured consent case."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import pytest

from proxy.config import Consent, from_mapping
from proxy.consent import gate as gate_module
from proxy.consent.bridge import BridgeOptions
from proxy.consent.gate import ConsentGate, ConsentVerdict
from proxy.consent.registry import source_type
from proxy.consent.verdict import ConsentInput
from proxy.ingest.cookies import parse_cookie_header
from proxy.location.regions import Regime, RegimeMap
from tests.conftest import CONSENT_CASES

GRANTED = "analytics_consent=granted"
DENIED = "analytics_consent=denied"
IMPLIED_GCD = "gcd=13l3t3l3l5"  # analytics "t": granted by default, no user action
GRANTED_GCS = "gcs=G111"


def consent_config(**overrides: Any) -> Consent:
    return from_mapping({"measurement_ids": ["G-TEST1234"], "consent": overrides}).consent


def decide(
    gate: ConsentGate,
    cookie: str = "",
    query: str = "",
    *,
    gpc: bool = False,
    dnt: bool = False,
    regime: Regime = Regime.OPT_IN,
) -> ConsentVerdict:
    inp = ConsentInput(parse_cookie_header(cookie), [dict(parse_qsl(query))], time.time())
    return gate.decide(inp, gpc=gpc, dnt=dnt, regime=regime)


@pytest.mark.parametrize(
    ("cookie", "query", "kwargs", "forward", "reason"),
    [
        (GRANTED, "", {}, True, "granted"),
        (DENIED, GRANTED_GCS, {}, False, "denied"),  # any DENY wins over a GRANT
        (GRANTED, "gcs=G100", {}, False, "denied"),
        # The cookieless ping with gcd's analytics letter "not set": still the ping's denial.
        (GRANTED, "gcs=G100&gcd=13l3l3l3l1l1", {}, False, "denied"),
        (GRANTED, "gcs=G100&gcd=13l3l3l3l1l1", {"regime": Regime.OPT_OUT}, False, "denied"),
        ("", "", {}, False, "no_consent"),
        ("", "", {"regime": Regime.UNKNOWN}, False, "no_consent"),
        ("", "", {"regime": Regime.OTHER}, False, "no_consent"),
        ("", "", {"regime": Regime.OPT_OUT}, True, "default"),
        ("", IMPLIED_GCD, {"regime": Regime.OPT_OUT}, True, "implied"),
        ("", IMPLIED_GCD, {"regime": Regime.OPT_IN}, False, "no_consent"),
        ("", IMPLIED_GCD, {"regime": Regime.OPT_OUT, "gpc": True}, False, "gpc"),
        (GRANTED, "", {"gpc": True}, False, "gpc"),
        (GRANTED, "", {"dnt": True}, False, "dnt"),
        ("", "", {"regime": Regime.OPT_OUT, "gpc": True}, False, "gpc"),
        ("", "", {"regime": Regime.OPT_OUT, "dnt": True}, False, "dnt"),
    ],
)
def test_default_combination_rule(
    cookie: str, query: str, kwargs: dict[str, Any], forward: bool, reason: str
) -> None:
    verdict = decide(ConsentGate(consent_config()), cookie, query, **kwargs)
    assert (verdict.forward, verdict.reason) == (forward, reason)


@pytest.mark.parametrize(
    ("settings", "cookie", "kwargs", "forward", "reason"),
    [
        ({"gpc": "ignore"}, GRANTED, {"gpc": True}, True, "granted"),
        ({"gpc": "ignore"}, "", {"gpc": True, "regime": Regime.OPT_OUT}, True, "default"),
        ({"gpc": "ignore_for_explicit_grant"}, GRANTED, {"gpc": True}, True, "granted"),
        (
            {"gpc": "ignore_for_explicit_grant"},
            "",
            {"gpc": True, "regime": Regime.OPT_OUT},
            False,
            "gpc",
        ),
        ({"gpc": "ignore_for_explicit_grant"}, DENIED, {"gpc": True}, False, "denied"),
        ({"dnt": "ignore"}, GRANTED, {"dnt": True}, True, "granted"),
        ({"defaults": {"other": "forward"}}, "", {"regime": Regime.OTHER}, True, "default"),
        ({"defaults": {"opt_out": "drop"}}, "", {"regime": Regime.OPT_OUT}, False, "no_consent"),
    ],
)
def test_configured_gpc_dnt_and_defaults(
    settings: dict[str, Any], cookie: str, kwargs: dict[str, Any], forward: bool, reason: str
) -> None:
    verdict = decide(ConsentGate(consent_config(**settings)), cookie, **kwargs)
    assert (verdict.forward, verdict.reason) == (forward, reason)


def test_implied_never_counts_with_gpc_even_when_gpc_is_ignored() -> None:
    gate = ConsentGate(consent_config(gpc="ignore", defaults={"opt_out": "drop"}))
    verdict = decide(gate, "", IMPLIED_GCD, gpc=True, regime=Regime.OPT_OUT)
    assert not verdict.forward


def test_the_deciding_source_is_named_and_every_reading_recorded() -> None:
    gate = ConsentGate(consent_config())
    verdict = decide(gate, DENIED, GRANTED_GCS)
    assert verdict.source == "bridge"
    readings = dict(verdict.verdicts)
    assert readings["consent_mode"].value == "grant"
    assert readings["bridge"].value == "deny"
    assert set(readings) == set(gate.source_names)


def test_a_source_that_raises_drops_the_beacon(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(options: BridgeOptions) -> Any:
        def source(inp: ConsentInput) -> Any:
            raise RuntimeError("boom")

        return source

    monkeypatch.setitem(gate_module.COMPILERS, BridgeOptions, explode)
    verdict = decide(ConsentGate(consent_config()), GRANTED, GRANTED_GCS)
    assert (verdict.forward, verdict.reason) == (False, "consent_error")


def _fixture_consent(case: dict[str, Any]) -> Consent:
    base = consent_config()
    overrides = case["config"]
    sources = [
        msgspec.structs.replace(s, **overrides[source_type(s)])
        if source_type(s) in overrides
        else s
        for s in base.sources
    ]
    return msgspec.structs.replace(base, sources=sources)


@pytest.mark.parametrize("case", CONSENT_CASES, ids=[f"case-{c['id']}" for c in CONSENT_CASES])
def test_captured_consent_case_decides_as_expected(case: dict[str, Any]) -> None:
    config = _fixture_consent(case)
    regimes = RegimeMap(config.regimes.opt_in, config.regimes.opt_out)
    headers = {k.lower(): v for k, v in case["headers"].items()}
    verdict = decide(
        ConsentGate(config),
        case["cookie"],
        case["query"],
        gpc=headers.get("sec-gpc") == "1",
        dnt=headers.get("dnt") == "1",
        regime=regimes.regime(case["country"], case["region"]),
    )
    assert verdict.forward == (case["expected"] == "forward")
    if case["source"] and verdict.forward:
        assert verdict.source == case["source"]
