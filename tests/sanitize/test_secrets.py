"""Secrets and base64: tokens that read as random, and encodings that hide an address."""

from __future__ import annotations

import base64

import pytest

from proxy.sanitize.secrets import SecretDetector, base64_detector, is_random

SECRET = SecretDetector()


@pytest.mark.parametrize("text", [
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk",
    "550e8400-e29b-41d4-a716-446655440000",
    "5f2b8c9d1e3a4f6b7c8d9e0a1b2c3d4e",
    "zQ8v-Kp3L_9xTq-Ab2D-mN7w",
    "k3j9x8fh2qab7w1z",
])
def test_tokens_are_secrets(text: str) -> None:
    assert SECRET(f"/reset/{text}") == "/reset/[secret]"


@pytest.mark.parametrize("text", [
    "summer_sale_2024", "samsung-galaxy-s24-ultra-512gb", "MacBookPro16M3MaxSilver",
    "black-friday-24", "design-systems-in-practice-2024", "SKU-10023-BLK-M",
    "45je42q1v8",
])
def test_slugs_and_product_codes_are_not_secrets(text: str) -> None:
    assert not is_random(text)
    assert SECRET(text) is None


def test_base64_of_an_address_is_found_and_other_base64_is_not() -> None:
    detector = base64_detector(lambda text: "@" in text)
    hidden = base64.b64encode(b"zelda.quux@example.org").decode()
    plain = base64.urlsafe_b64encode(b"Product Catalogue 2024").decode()
    assert detector(f"u/{hidden}") == "u/[encoded]"
    assert detector(f"u/{plain}") is None
