"""The normalised view: one spelling per value, whatever encoding or script it arrived in."""

from __future__ import annotations

import pytest

from proxy.sanitize.normalize import MAX_DECODE_ROUNDS, view


@pytest.mark.parametrize(("text", "seen"), [
    ("zelda%40example.org", "zelda@example.org"),
    ("zelda%252540example.org", "zelda@example.org"),  # encoded three times
    ("zelda&#64;example.org", "zelda@example.org"),
    ("zelda&commat;example.org", "zelda@example.org"),
    ("zelda&#x40;example.org", "zelda@example.org"),
    ("zelda%26%2364%3Bexample.org", "zelda@example.org"),  # an entity, then encoded
    ("zelda\uff20example\uff0eorg", "zelda@example.org"),  # fullwidth
    ("zelda\ufe6bexample.org", "zelda@example.org"),  # small commercial at
    ("zel\u200bda@exa\u00admple.org", "zelda@example.org"),  # zero-width space, soft hyphen
    ("\u202ezelda@example.org\u202c", "zelda@example.org"),  # bidi controls
    ("zelda @ example.org", "zelda@example.org"),
    ("zelda [at] example [dot] org", "zelda@example.org"),
    ("zelda(at)example(dot)org", "zelda@example.org"),
    ("zelda dot quux at example dot org", "zelda.quux@example.org"),
    ("zelda.quux AT example.org", "zelda.quux@example.org"),
    ("\u0664\u0661\u0661\u0661 \u0661\u0661\u0661\u0661", "4111 1111"),  # Arabic-Indic digits
    ("+44\u00a020\u00a07946\u00a00958", "+44 20 7946 0958"),  # no-break spaces
    ("212\u2013555\u20130199", "212-555-0199"),  # en dashes
])
def test_every_spelling_has_one_view(text: str, seen: str) -> None:
    assert view(text) == seen


@pytest.mark.parametrize("text", [
    "Products | Demo E-commerce Store",
    "iPhone 15 Pro 256GB",
    "size 42 shoes",
    "2024-05-12T10:20:30Z",
    "summer_sale_2024",
])
def test_plain_ascii_is_its_own_view(text: str) -> None:
    assert view(text) is text


@pytest.mark.parametrize("text", [
    "Meet us at the studio",
    "Doors open at 10.30",  # no top-level domain: a time
    "Save 20% at checkout",
    "Fish & Chips",
    "100% cotton",
])
def test_words_at_and_dot_outside_an_address_are_left_alone(text: str) -> None:
    assert view(text) == text


def test_decoding_is_bounded() -> None:
    text = "%25" * 2 + "%" + "25" * (MAX_DECODE_ROUNDS + 4) + "40"
    assert "@" not in view(text)  # stops after MAX_DECODE_ROUNDS, instead of looping on
