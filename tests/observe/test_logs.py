"""The JSON log formatter: whoever writes a record, no client address reaches the log."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from proxy.observe.logs import ADDRESS, JsonFormatter, scrub, setup

FORWARDED = "203.0.113.77"


def record(
    name: str, msg: object, *args: object, exc: BaseException | None = None, **extra: Any
) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.getLogger(name).makeRecord(
        name, logging.ERROR, __file__, 1, msg, args, exc_info, extra=extra or None)


def formatted(rec: logging.LogRecord) -> dict[str, Any]:
    return dict(json.loads(JsonFormatter().format(rec)))


def test_aiohttp_error_record_is_written_without_its_peer_address() -> None:
    # What aiohttp's RequestHandler.handle_error logs for a request it cannot parse.
    entry = formatted(record("aiohttp.server", "Error handling request from %s", "127.0.0.1",
                             exc=ValueError(f"Bad header X-Forwarded-For: {FORWARDED}")))
    assert entry["message"] == "Error handling request from [redacted]"
    assert entry["exception"] == "ValueError"
    assert "127.0.0.1" not in json.dumps(entry) and "203.0.113" not in json.dumps(entry)


@pytest.mark.parametrize(
    ("msg", "args", "message"),
    [
        ("peer %s port %d", ("10.1.2.3", 5), "peer [redacted] port [redacted]"),
        ("%(peer)s said 100%%", ({"peer": "10.1.2.3"},), "[redacted] said 100%"),
        ("no arguments from %s", (), "no arguments from %s"),
        (ValueError("from 10.1.2.3"), (), "ValueError"),  # not a template: its type only
    ],
    ids=repr,
)
def test_a_third_party_message_is_its_template_never_its_arguments(
    msg: object, args: tuple[object, ...], message: str
) -> None:
    assert formatted(record("asyncio", msg, *args))["message"] == message


def test_our_own_messages_keep_their_arguments() -> None:
    entry = formatted(record("proxy.delivery.forward", "delivered %d beacons to %s", 3, "Google"))
    assert entry["message"] == "delivered 3 beacons to Google"


@pytest.mark.parametrize(
    "text",
    [
        f"from {FORWARDED}",
        "the /24 203.0.113.",
        "net 203.0.113.0/24",
        "peer=203.0.113.77:51234",
        "x_203.0.113.77",
        "2001:db8:85a3::8a2e:370:7334",
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        "[2001:db8::1]:443",
        "::ffff:203.0.113.77",
        "fe80::1%eth0",
        "prefix 2001:db8:1234::/48",
        "prefix 2001:db8:1234:",
        "::1",
    ],
)
def test_address_shapes_are_scrubbed(text: str) -> None:
    scrubbed = scrub(text)
    assert ADDRESS in scrubbed
    for part in ("203.0.113", "2001:db8", "db8:85a3", "fe80::1", "::1"):
        assert part not in scrubbed


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-05T07:48:16.488Z",
        "12:34:56",
        "aiohttp 3.14.5 on Python 3.11",
        "Chrome/122.0.6261.69",
        "deadline 0.05 s",
        "C0002:1",
    ],
)
def test_text_that_is_not_an_address_is_kept(text: str) -> None:
    assert scrub(text) == text


def test_every_written_field_is_scrubbed_except_the_configured_addresses() -> None:
    rec = record("proxy.server", "serving", host="127.0.0.1", upstream="http://10.0.0.5/g",
                 reason=f"odd {FORWARDED}", count=3, exc=RuntimeError(FORWARDED))
    entry = formatted(rec)
    # The configuration's own listen and upstream addresses are no client's.
    assert (entry["host"], entry["upstream"]) == ("127.0.0.1", "http://10.0.0.5/g")
    assert entry["reason"] == f"odd {ADDRESS}"
    assert entry["count"] == 3
    assert entry["exception"] == "RuntimeError"


def test_a_message_with_an_address_from_our_own_code_is_scrubbed_too() -> None:
    entry = formatted(record("proxy.pipeline", "unexpected %s", "2001:db8::42"))
    assert entry["message"] == f"unexpected {ADDRESS}"


def test_setup_writes_every_logger_through_the_formatter(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, access = logging.getLogger(), logging.getLogger("aiohttp.access")
    saved = root.handlers[:], root.level, access.disabled
    try:
        setup("debug")
        logging.getLogger("aiohttp.server").error("Error handling request from %s", FORWARDED)
        err = capsys.readouterr().err
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        access.disabled = saved[2]
    assert json.loads(err)["message"] == "Error handling request from [redacted]"
    assert "203.0.113" not in err
