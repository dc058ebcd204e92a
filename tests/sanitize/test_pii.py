"""PiiScrubber: what is replaced, and, as important, what is left alone."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from stdnum import ean, luhn
from stdnum import iban as stdnum_iban

from proxy.sanitize.pii import (
    DEFAULT_DETECTORS,
    DETECTORS,
    PiiScrubber,
    contains_pii,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "ga4-hits.jsonl"
ALL = PiiScrubber(list(DETECTORS))
DEFAULT = PiiScrubber()


def mod97_valid(iban: str) -> bool:
    """The IBAN check digits (mod 97) hold, whatever the country's account format."""
    try:
        stdnum_iban.validate(iban, check_country=False)
    except ValueError:
        return False
    return True


def captured_titles() -> list[str]:
    titles = []
    with open(FIXTURES, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                query = urlsplit(json.loads(line)["url"]).query
                titles += [value for key, value in parse_qsl(query) if key == "dt"]
    return titles


# (text, scrubbed, detectors that fired)
REPLACED = [
    # e-mail
    ("john.smith@example.com", "[email]", ("email",)),
    ("Contact: Jane.Doe+news@mail.example.co.uk today", "Contact: [email] today", ("email",)),
    ("<anna_m@web.de>", "<[email]>", ("email",)),
    ("john%40example.com", "[email]", ("email",)),
    ("a@b.io, c@d.io", "[email], [email]", ("email",)),
    ("josé@exemple.fr", "[email]", ("email",)),
    # phone, international
    ("Call +44 20 7946 0958 now", "Call [phone] now", ("phone",)),
    ("tel:+4915123456789", "tel:[phone]", ("phone",)),
    ("+1 (555) 123-4567", "[phone]", ("phone",)),
    ("+33 (0)1 23 45 67 89", "[phone]", ("phone",)),
    ("+34 612 34 56 78", "[phone]", ("phone",)),
    ("0044 20 7946 0958", "[phone]", ("phone",)),
    ("+44 20 7946 0958 1234 5678", "[phone] 1234 5678", ("phone",)),
    # phone, national
    ("020 7946 0958", "[phone]", ("phone",)),
    ("(555) 123-4567", "[phone]", ("phone",)),
    ("555-123-4567", "[phone]", ("phone",)),
    ("555.123.4567", "[phone]", ("phone",)),
    ("01 23 45 67 89", "[phone]", ("phone",)),
    ("06.12.34.56.78", "[phone]", ("phone",)),
    ("06-12345678", "[phone]", ("phone",)),
    ("0151 23456789", "[phone]", ("phone",)),
    ("912 345 678", "[phone]", ("phone",)),
    ("Tel:0612345678", "Tel:[phone]", ("phone",)),
    ("mobile 07700900123.", "mobile [phone].", ("phone",)),
    ("Call 020 7946 0958 24/7", "Call [phone]/7", ("phone",)),
    # payment cards (Luhn-valid test numbers)
    ("4111 1111 1111 1111", "[card]", ("card",)),
    ("4111-1111-1111-1111", "[card]", ("card",)),
    ("card=4111111111111111;", "card=[card];", ("card",)),
    ("3782 822463 10005", "[card]", ("card",)),
    ("4222222222222", "[card]", ("card",)),
    ("4111 1111 1111 1111 123", "[card] 123", ("card",)),
    ("4111111111111111 020 7946 0958", "[card] [phone]", ("card", "phone")),
    # IBAN
    ("DE89 3704 0044 0532 0130 00", "[iban]", ("iban",)),
    ("IBAN: GB82WEST12345698765432.", "IBAN: [iban].", ("iban",)),
    ("de89 3704 0044 0532 0130 00 is mine", "[iban] is mine", ("iban",)),
    ("NO93 8601 1117 947", "[iban]", ("iban",)),
    # IP addresses
    ("from 192.168.1.20.", "from [ip].", ("ipv4",)),
    ("8.8.8.8", "[ip]", ("ipv4",)),
    ("2001:db8::8a2e:370:7334", "[ip]", ("ipv6",)),
    ("peer [2001:db8:85a3:0:0:8a2e:370:7334]", "peer [[ip]]", ("ipv6",)),
    ("::ffff:192.0.2.1", "[ip]", ("ipv6",)),
    # digits of other scripts are digits too
    ("\u0664\u0661\u0661\u0661 \u0661\u0661\u0661\u0661 \u0661\u0661\u0661\u0661 "
     "\u0661\u0661\u0661\u0661", "[card]", ("card",)),
    ("\uff10\uff12\uff10 \uff17\uff19\uff14\uff16 \uff10\uff19\uff15\uff18", "[phone]",
     ("phone",)),
    # several at once
    ("a@b.com / +44 20 7946 0958", "[email] / [phone]", ("email", "phone")),
]


@pytest.mark.parametrize(("text", "expected", "fired"), REPLACED)
def test_personal_value_is_replaced_by_its_token(text: str, expected: str,
                                                 fired: tuple[str, ...]) -> None:
    assert DEFAULT.scrub(text) == (expected, fired)


@pytest.mark.parametrize(("text", "expected", "fired"), REPLACED)
def test_scrubbed_text_does_not_fire_again(text: str, expected: str,
                                           fired: tuple[str, ...]) -> None:
    assert DEFAULT.scrub(expected) == (expected, ())


LEFT_ALONE = [
    # ordinary titles, including every captured one below
    "Products | Demo E-commerce Store",
    "iPhone 15 Pro \N{EN DASH} 128 GB | Apple Store",
    "Top 10 Hotels in Paris 2024",
    "Page 2 of 17",
    "404 Not Found",
    "@handle on Twitter",
    "user@localhost",
    # years, dates, times, timestamps
    "2024",
    "2023-2024 season",
    "2024-05-12",
    "12/05/2024",
    "12.05.2024",
    "01.01.2024 - 31.12.2024",
    "2024-05-12T10:20:30Z",
    "2024-05-12T10:20:30.123+02:00",
    "2024-05-12 10:20:30",
    "meeting 10:20:30",
    "Open 09:00-18:00",
    "1709204106779",
    "1709204106",
    "order 1709204106",
    # prices and quantities
    "Price 1 299,00 €",
    "€ 12.999.999,00",
    "$1,299.99",
    "123 456 789,00",
    "Save 20% \N{EN DASH} now 1,299.00 €",
    "Sizes 36 38 40 42 44",
    "EU 39 40 41 42 43 44 45",
    # versions
    "Chrome 122.0.6261.69",
    "v1.2.3.4",
    "version 10.0.19045.4046",
    "1.5.0",
    # product and document codes
    "SKU 123-456-789",
    "Model 2023-001-45",
    "Art.-Nr. 12345678",
    "ISBN 978-3-16-148410-0",
    "ISBN 9783161484100",
    "75008 Paris",
    "G-F9PE5LESJW",
    # card-shaped but not Luhn-valid, or not a payment industry
    "4111 1111 1111 1112",
    "4111111111111112",
    "1234 5678 9012 3456",
    "7777 7777 7777 7777",
    # IBAN-shaped but failing mod-97
    "DE00 3704 0044 0532 0130 00",
    "XX12 ABCD EFGH IJKL",
    # colons that are not addresses
    "Ratio 16:9:4",
    "Foo::Bar",
]


@pytest.mark.parametrize("text", LEFT_ALONE)
def test_ordinary_text_is_returned_as_the_same_object(text: str) -> None:
    out, fired = DEFAULT.scrub(text)
    assert fired == ()
    assert out is text


@pytest.mark.parametrize("text", captured_titles())
def test_captured_titles_are_left_alone(text: str) -> None:
    assert DEFAULT.scrub(text) == (text, ())


@pytest.mark.parametrize("number", [
    "4111111111111111", "5555555555554444", "378282246310005", "6011111111111117",
    "3530111333300000", "4012888888881881", "2223003122003222", "4222222222222",
    "6200000000000005", "30569309025904", "5105105105105100", "371449635398431",
])
def test_luhn_valid_card_numbers_are_replaced(number: str) -> None:
    assert luhn.is_valid(number)
    grouped = " ".join(number[i:i + 4] for i in range(0, len(number), 4))
    assert DEFAULT.scrub(f"paid with {grouped}") == ("paid with [card]", ("card",))


@pytest.mark.parametrize("number", [
    "4111111111111112", "5555555555554445", "378282246310006", "6011111111111118",
    "4012888888881882", "2223003122003223", "4222222222223",
])
def test_luhn_invalid_card_numbers_are_not_cards(number: str) -> None:
    assert not luhn.is_valid(number)
    assert "card" not in DEFAULT.scrub(number)[1]


def with_check_digit(prefix: str) -> str:
    """``prefix`` completed with the digit that makes it Luhn-valid."""
    return next(prefix + d for d in "0123456789" if luhn.is_valid(prefix + d))


@pytest.mark.parametrize("prefix", ["170920410677", "123456789012345", "800000000000000",
                                    "900000000000000", "000000000000000"])
def test_luhn_valid_numbers_outside_payment_industries_are_not_cards(prefix: str) -> None:
    # 1 (airlines, and epoch-ms timestamps), 7-9 and 0: not payment cards.
    number = with_check_digit(prefix)
    assert "card" not in DEFAULT.scrub(number)[1]


@pytest.mark.parametrize("iban", [
    "DE89 3704 0044 0532 0130 00", "GB82 WEST 1234 5698 7654 32",
    "FR14 2004 1010 0505 0001 3M02 606", "NL91 ABNA 0417 1643 00",
    "ES91 2100 0418 4502 0005 1332", "BE68 5390 0754 7034", "CH93 0076 2011 6238 5295 7",
    "IT60 X054 2811 1010 0000 0123 456", "AT61 1904 3002 3457 3201", "NO93 8601 1117 947",
    "PL61 1090 1014 0000 0712 1981 2874", "SE45 5000 0000 0583 9825 7466",
    "IE29 AIBK 9311 5212 3456 78", "MT84 MALT 0110 0001 2345 MTLC AST0 01S",
])
def test_valid_ibans_are_replaced_with_or_without_spaces(iban: str) -> None:
    assert mod97_valid(iban)
    assert DEFAULT.scrub(iban) == ("[iban]", ("iban",))
    assert DEFAULT.scrub(iban.replace(" ", "")) == ("[iban]", ("iban",))


@pytest.mark.parametrize("iban", [
    "DE89 3704 0044 0532 0130 01", "GB82 WEST 1234 5698 7654 33", "NL91 ABNA 0417 1643 01",
    "FR14 2004 1010 0505 0001 3M02 607", "NO93 8601 1117 94",
])
def test_ibans_failing_mod97_are_not_ibans(iban: str) -> None:
    assert not mod97_valid(iban)
    assert "iban" not in DEFAULT.scrub(iban)[1]


@pytest.mark.parametrize(("text", "expected"), [
    ("SW1A 1AA", "[postcode]"),
    ("Delivery to EC1A 1BB, London", "Delivery to [postcode], London"),
    ("M1 1AE", "[postcode]"),
])
def test_uk_postcode_detector_replaces_full_postcodes(text: str, expected: str) -> None:
    assert PiiScrubber(["uk_postcode"]).scrub(text) == (expected, ("uk_postcode",))


def test_uk_postcode_is_not_a_default_detector() -> None:
    assert "uk_postcode" not in DEFAULT_DETECTORS
    assert DEFAULT.scrub("SW1A 1AA") == ("SW1A 1AA", ())


def test_every_default_detector_is_registered() -> None:
    assert set(DEFAULT_DETECTORS) <= set(DETECTORS)
    assert DEFAULT.names == tuple(n for n in DETECTORS if n in DEFAULT_DETECTORS)


def test_detectors_run_in_table_order_whatever_the_configured_order() -> None:
    scrubber = PiiScrubber(["phone", "email"])
    assert scrubber.names == ("email", "phone")
    assert scrubber.scrub("x+4420794609581@example.com") == ("[email]", ("email",))


def test_only_selected_detectors_run() -> None:
    assert PiiScrubber(["email"]).scrub("a@b.com +44 20 7946 0958") == (
        "[email] +44 20 7946 0958", ("email",))
    assert PiiScrubber([]).scrub("a@b.com") == ("a@b.com", ())


def test_a_single_name_is_not_split_into_characters() -> None:
    assert PiiScrubber("email").names == ("email",)


def test_unknown_detector_is_rejected_by_name() -> None:
    with pytest.raises(ValueError, match="'passport'"):
        PiiScrubber(["email", "passport"])


def test_contains_pii_reports_whether_anything_fired() -> None:
    assert contains_pii("write to a@b.com")
    assert not contains_pii("Products | Demo E-commerce Store")
    assert DEFAULT.contains_pii("4111 1111 1111 1111")


@pytest.mark.parametrize("text", [
    "a" * 50_000 + "@",
    "a@" + "b" * 50_000,
    "a@" + "b." * 25_000,
    "1 " * 25_000,
    "1-" * 25_000,
    "+" + "1 " * 25_000,
    "ab12 " * 10_000,
    "1:" * 25_000,
    "1." * 25_000,
])
def test_adversarial_input_is_scanned_to_completion(text: str) -> None:
    # Catastrophic backtracking would hang here; its cost is measured in the benchmark's
    # terms, not asserted in seconds.
    scrubbed, fired = DEFAULT.scrub(text)
    assert isinstance(scrubbed, str) and len(scrubbed) <= len(text) + 16 * len(fired) + 16


@given(st.text())
@settings(max_examples=500)
def test_scrub_never_raises_and_is_stable(text: str) -> None:
    out, fired = ALL.scrub(text)
    if not fired:
        assert out is text
    assert ALL.scrub(out)[1] == ()


@given(before=st.text(max_size=30), email=st.emails(), after=st.text(max_size=30))
@settings(max_examples=500)
def test_embedded_email_never_survives(before: str, email: str, after: str) -> None:
    out, fired = DEFAULT.scrub(f"{before}{email}{after}")
    assert email not in out
    assert "email" in fired


@given(digits=st.text(alphabet="0123456789", min_size=11, max_size=17),
       separator=st.sampled_from(["", " ", "-"]))
def test_any_luhn_valid_payment_number_is_replaced(digits: str, separator: str) -> None:
    candidate = with_check_digit(str(4 + int(digits[0]) % 3) + digits)  # industry 4-6
    # A 13-digit number that is also a valid EAN-13 barcode is a product (numbers.py).
    assume(not (len(candidate) == 13 and ean.is_valid(candidate)))
    grouped = separator.join(candidate[i:i + 4] for i in range(0, len(candidate), 4))
    out, fired = DEFAULT.scrub(f"card {grouped} end")
    assert out == "card [card] end"
    assert fired == ("card",)
