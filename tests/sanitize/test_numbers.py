"""Numbers confirmed by libraries: phone plans by region, national identity numbers."""

from __future__ import annotations

import pytest

from proxy.sanitize.numbers import PhoneDetector, national_id_detector

EUROPE_AND_US = ("GB", "DE", "FR", "ES", "IT", "NL", "US")
PHONE = PhoneDetector(EUROPE_AND_US)
IDS = national_id_detector()


@pytest.mark.parametrize("text", [
    "5551234567", "1-212-555-0199", "1 (212) 555-0199", "(212) 555-0199", "+1 212 555 0199",
    "030/12345678", "+49 30 12345678", "0049 30 12345678", "020 7946 0958", "07700 900123",
    "+44 7700 900123", "06 12 34 56 78", "+33 6 12 34 56 78", "612 345 678", "02 1234 5678",
    "442079460958",  # an international number whose "+" was lost in a query string
])
def test_phone_numbers_in_the_configured_regions_are_found(text: str) -> None:
    assert PHONE(f"call {text} now") == "call [phone] now"


@pytest.mark.parametrize("text", [
    "1733389200",  # epoch seconds
    "1720047351081",  # epoch milliseconds
    "978-3-16-148410-0",  # ISBN-13
    "0-306-40615-2",  # ISBN-10
    "2024-05-12", "12/05/2024", "01.01.2024 - 31.12.2024",
    "122.0.6261.69",  # a version
    "36 38 40 42 44",  # sizes
    "123-456-789",  # a product code of nine digits
    "4006381333931",  # EAN-13
    "24/7",
])
def test_numbers_that_are_not_phones_are_left_alone(text: str) -> None:
    assert PHONE(f"x {text} y") is None


def test_national_formats_depend_on_the_configured_regions() -> None:
    assert PhoneDetector(("US",))("call 030/12345678") is None
    assert PhoneDetector(("DE",))("call 030/12345678") == "call [phone]"
    assert PhoneDetector(("DE",))("call 5551234567") is None
    assert PhoneDetector(())("call +49 30 12345678") == "call [phone]"


def test_an_unknown_region_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'XX'"):
        PhoneDetector(("XX",))


@pytest.mark.parametrize("text", [
    "123-45-6789",  # US SSN, hyphenated
    "SSN 536221234",  # labelled, bare
    "BSN: 111222333",
    "111222333",  # NL BSN, 11-test
    "65929970489",  # DE Steuer-IdNr
    "12345678Z", "48.213.977-C",  # ES DNI
    "X1234567L",  # ES NIE
    "RSSMRA85T10A562S",  # IT codice fiscale
    "QQ 12 34 56 C",  # UK NINO
])
def test_national_identity_numbers_are_found(text: str) -> None:
    assert IDS(f"id {text} end") == "id [id] end"


@pytest.mark.parametrize("text", [
    "536221234",  # nine digits, no label: could be anything
    "111222334",  # fails the 11-test
    "65929970488",  # wrong check digit
    "12345678A",  # wrong DNI letter
    "078-05-1120",  # the Woolworth wallet SSN, never valid
])
def test_numbers_failing_their_check_are_not_identity_numbers(text: str) -> None:
    assert IDS(f"id {text} end") is None
