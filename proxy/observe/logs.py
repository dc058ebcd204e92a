"""JSON logs, one object a line. Only whitelisted extra fields are written, so a value
passed by mistake (a cookie, an address) never reaches the log.

Two rules hold whoever writes the record. A third-party logger's message is written as its
template, never with its arguments: aiohttp's "Error handling request from %s" would name the
visitor. And, as a last resort, whatever looks like an IP address (or a /24 written
``203.0.113.``) in what is written becomes ``[address]``; only the configuration's own
``host`` and ``upstream`` are exempt, as no request can put anything there.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

SAFE_FIELDS = (
    "reason",
    "count",
    "mode",
    "port",
    "host",
    "url",
    "upstream",
    "workers",
    "profile",
    "deadline",
    "remaining",
    "source",
    "status",
)
CONFIG_FIELDS = frozenset({"host", "upstream"})  # from the configuration file, never a request
OWN_LOGGER = "proxy"
REDACTED = "[redacted]"
ADDRESS = "[address]"

_ADDRESS = re.compile(
    r"\d{1,3}(?:\.\d{1,3}){2}\.\d{0,3}"  # IPv4, or its /24 written "203.0.113."
    r"|[0-9A-Fa-f:]*::[0-9A-Fa-f:.]*"  # IPv6 with "::" (an embedded IPv4 tail included)
    r"|[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){3,}"  # IPv6 written out, or a prefix of it
)
# A %-style placeholder of a logging template, "%%" included.
_PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[A-Za-z%]")


def scrub(text: str) -> str:
    """``text`` with anything shaped like an IPv4/IPv6 address or a /24 replaced.

    Deliberately greedy: a version string or a MAC address may go too; an address never stays.
    """
    return _ADDRESS.sub(ADDRESS, text)


def _message(record: logging.LogRecord) -> str:
    if record.name == OWN_LOGGER or record.name.startswith(OWN_LOGGER + "."):
        return record.getMessage()
    # Someone else's record: its arguments may be the peer's address or the request's bytes.
    template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
    if not record.args:
        return template
    return _PLACEHOLDER.sub(lambda m: "%" if m.group() == "%%" else REDACTED, template)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _message(record),
        }
        for name in SAFE_FIELDS:
            if name in record.__dict__:
                entry[name] = record.__dict__[name]
        if record.exc_info and record.exc_info[0] is not None:
            # The type only: an exception's text may quote the request.
            entry["exception"] = record.exc_info[0].__name__
        for name, value in entry.items():
            if name in CONFIG_FIELDS or isinstance(value, int | float | bool) or value is None:
                continue
            entry[name] = scrub(value if isinstance(value, str) else str(value))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return json.dumps(
            {"time": f"{stamp}.{int(record.msecs):03d}Z", **entry}, ensure_ascii=False
        )


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would write every visitor's address: off on the hot path.
    logging.getLogger("aiohttp.access").disabled = True
