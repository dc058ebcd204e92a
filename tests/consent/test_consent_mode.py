"""Consent Mode: ``gcd`` letters decoded by bits, ``gcs`` as the fallback, events merged."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from proxy.consent.consent_mode import (
    GCD_ALPHABET,
    ConsentModeOptions,
    compile_source,
    gcd_letter_verdict,
)
from proxy.consent.verdict import ConsentInput, Verdict

GRANT, DENY, IMPLIED, ABSTAIN = Verdict.GRANT, Verdict.DENY, Verdict.IMPLIED, Verdict.ABSTAIN


def verdict(*events: Mapping[str, str]) -> Verdict:
    source = compile_source(ConsentModeOptions())
    return source(ConsentInput(cookies={}, events=events, now=0.0))


# consent-signals.md §3, letter by letter.
@pytest.mark.parametrize(
    ("letter", "expected"),
    [
        ("l", ABSTAIN),  # not set
        ("p", DENY),  # denied by default
        ("q", DENY),  # denied by default and by the user
        ("t", IMPLIED),  # granted by default only
        ("r", GRANT),  # denied by default, granted by the user
        ("m", DENY),  # denied by the user
        ("n", GRANT),  # granted by the user
        ("u", DENY),  # granted by default, denied by the user
        ("v", GRANT),  # granted by default and by the user
    ],
)
def test_bit_decoding_agrees_with_the_spec_letter_table(letter: str, expected: Verdict) -> None:
    assert gcd_letter_verdict(letter) is expected
    assert verdict({"gcd": f"13{letter}3{letter}3{letter}3{letter}5l1"}) is expected


@pytest.mark.parametrize(
    ("letter", "expected"),
    [
        ("7", GRANT),  # 0b0111: update granted, default unset, without the high marker bit
        ("f", GRANT),  # 0b1111
        ("e", DENY),  # 0b1110
        ("d", IMPLIED),  # 0b1101
        ("9", DENY),  # 0b1001: update unset, default denied
        ("5", ABSTAIN),  # 0b0101: both unset
        ("L", GRANT),  # 47 = 0b101111: high bits are ignored
        ("_", GRANT),  # 63
    ],
)
def test_unseen_letters_still_decode_by_bits(letter: str, expected: Verdict) -> None:
    assert gcd_letter_verdict(letter) is expected


@pytest.mark.parametrize("letter", ["0", "4", "g", "k", "*", "é", ""])
def test_letters_with_a_zero_state_or_outside_the_alphabet_do_not_decode(letter: str) -> None:
    assert gcd_letter_verdict(letter) is None


def test_every_alphabet_letter_decodes_or_is_refused_without_raising() -> None:
    for letter in GCD_ALPHABET:
        assert gcd_letter_verdict(letter) in (None, *Verdict)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"gcs": "G111"}, GRANT),
        ({"gcs": "G101"}, GRANT),
        ({"gcs": "G110"}, DENY),
        ({"gcs": "G100"}, DENY),  # advanced mode's cookieless ping
        ({"gcs": "G11-"}, ABSTAIN),
        ({"gcs": "G1--"}, ABSTAIN),
        ({"gcs": "G1"}, ABSTAIN),
        ({"gcs": "G2 11"}, ABSTAIN),
        ({"gcs": "g111"}, ABSTAIN),
        ({"gcs": ""}, ABSTAIN),
        ({"gcs": "G11x"}, ABSTAIN),
        ({}, ABSTAIN),
        ({"npa": "1"}, ABSTAIN),
    ],
    ids=repr,
)
def test_gcs_alone_reads_the_analytics_character(
    params: Mapping[str, str], expected: Verdict
) -> None:
    assert verdict(params) is expected


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        # A granted-by-default site sends G1x1 without a user choice: gcd says IMPLIED.
        ({"gcs": "G111", "gcd": "13t3t3t3t5l1"}, IMPLIED),
        ({"gcs": "G111", "gcd": "13r3r3r3r5l1"}, GRANT),
        ({"gcs": "G100", "gcd": "13p3p3p3p5l1"}, DENY),
        ({"gcs": "G111", "gcd": "13v3u3v3v5l1"}, DENY),
        # gcd decodes to "not set": it still decides, gcs is not consulted.
        ({"gcs": "G111", "gcd": "13l3l3l3l1l1"}, ABSTAIN),
        ({"gcd": "13l3l3l3l1l1"}, ABSTAIN),
        # Uppercase separators: only the letters matter.
        ({"gcd": "13t3tPt2t5l1"}, IMPLIED),
        ({"gcd": "13tPr2t5l1"}, GRANT),
    ],
    ids=repr,
)
def test_gcd_decides_when_its_analytics_letter_decodes(
    params: Mapping[str, str], expected: Verdict
) -> None:
    assert verdict(params) is expected


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"gcs": "G111", "gcd": "13r3"}, GRANT),  # too short to hold the analytics letter
        ({"gcs": "G100", "gcd": ""}, DENY),
        ({"gcs": "G111", "gcd": "13r3*3r3r5l1"}, GRANT),  # not in the alphabet
        ({"gcs": "G110", "gcd": "13r3g3r3r5l1"}, DENY),  # a zero state
        ({"gcd": "13r3*3r3r5l1"}, ABSTAIN),
        ({"gcd": "garb&ge"}, ABSTAIN),
        ({"gcd": "gar"}, ABSTAIN),
    ],
    ids=repr,
)
def test_gcs_is_the_fallback_when_gcd_is_absent_or_undecodable(
    params: Mapping[str, str], expected: Verdict
) -> None:
    assert verdict(params) is expected


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        # Advanced mode's cookieless ping beside a gcd whose analytics letter is "not set".
        ({"gcs": "G100", "gcd": "13l3l3l3l1l1"}, DENY),
        ({"gcs": "G110", "gcd": "13l3l3l3l1"}, DENY),
        ({"gcs": "G1-0", "gcd": "13t3t3t3t5l1"}, DENY),  # beside a granted default
        ({"gcs": "G100", "gcd": "13q3n3q3q5l1"}, DENY),  # beside a user grant: contradiction
        ({"gcs": "G111", "gcd": "13p3p3p3p5l1"}, DENY),  # gcd's denial wins the same way
    ],
    ids=repr,
)
def test_a_denial_in_either_parameter_denies(
    params: Mapping[str, str], expected: Verdict
) -> None:
    assert verdict(params) is expected


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([], ABSTAIN),
        ([{"gcs": "G111"}, {"gcs": "G100"}], DENY),
        ([{"gcs": "G111"}, {}], GRANT),
        ([{"gcd": "13t3t3t3t5l1"}, {"gcd": "13r3r3r3r5l1"}], GRANT),
        ([{"gcd": "13t3t3t3t5l1"}, {}], IMPLIED),
        ([{"gcd": "13t3t3t3t5l1"}, {"gcd": "13t3m3t3t5l1"}], DENY),
        ([{}, {"en": "page_view"}], ABSTAIN),
    ],
    ids=repr,
)
def test_events_are_merged_deny_first(events: list[Mapping[str, str]], expected: Verdict) -> None:
    assert verdict(*events) is expected
