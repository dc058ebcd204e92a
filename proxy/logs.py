"""JSON logs, one object a line. Only whitelisted extra fields are written, so a value
passed by mistake (a cookie, an address) never reaches the log."""

from __future__ import annotations

import json
import logging
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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in SAFE_FIELDS:
            if name in record.__dict__:
                entry[name] = record.__dict__[name]
        if record.exc_info and record.exc_info[0] is not None:
            # The type only: an exception's text may quote the request.
            entry["exception"] = record.exc_info[0].__name__
        return json.dumps(entry, ensure_ascii=False)


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would write every visitor's address: off on the hot path.
    logging.getLogger("aiohttp.access").disabled = True
