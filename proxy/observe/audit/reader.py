"""``analytics-proxy audit tail``: prints the trail's newest records, and with ``--follow``
new ones as they come; reads the stream directly with Redis, else the admin port."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import IO, Any, Protocol

from proxy.config import Config
from proxy.observe.audit.record import Record, decode_entries
from proxy.observe.audit.trail import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    REDIS_TIMEOUT,
    STREAM_KEY,
    UNREACHABLE,
)
from proxy.sanitize.policy import Action

FOLLOW_BLOCK_MS = 5000  # XREAD BLOCK per round of ``audit tail --follow`` on Redis
POLL_INTERVAL = 1.0  # seconds between admin requests of ``audit tail --follow``


class TailError(Exception):
    """``audit tail`` cannot read the trail; the message says why, for the operator."""


class _Source(Protocol):
    start_id: str

    def recent(self, limit: int) -> list[Record]: ...

    def after(self, after_id: str) -> list[Record]: ...


class RedisSource:
    start_id = "0-0"

    def __init__(self, url: str, key: str = STREAM_KEY) -> None:
        import redis

        self._key = key
        self._client = redis.Redis.from_url(
            url, socket_timeout=FOLLOW_BLOCK_MS / 1000 + REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
        )

    def recent(self, limit: int) -> list[Record]:
        try:
            rows = self._client.xrevrange(self._key, count=limit)
        except UNREACHABLE:
            raise TailError("cannot reach Redis (state.redis_url)") from None
        return list(decode_entries(reversed(rows or [])))

    def after(self, after_id: str) -> list[Record]:
        try:
            got = self._client.xread({self._key: after_id}, count=MAX_LIMIT,
                                     block=FOLLOW_BLOCK_MS)
        except UNREACHABLE:
            raise TailError("cannot reach Redis (state.redis_url)") from None
        streams: Any = got or ()
        return [r for _, rows in streams for r in decode_entries(rows)]


class HttpSource:
    """The admin port's ``GET /audit``: the in-memory ring of a running process."""

    start_id = "0"

    def __init__(self, url: str, token: str | None) -> None:
        self._url = url.rstrip("/") + "/audit"
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._newest: int | None = None

    def _get(self, **query: str) -> list[Record]:
        url = f"{self._url}?{urllib.parse.urlencode(query)}"
        try:
            request = urllib.request.Request(url, headers=self._headers)
            with urllib.request.urlopen(request, timeout=10) as resp:
                answer = json.load(resp)
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                raise TailError(
                    f"{self._url}: admin token refused (admin.token or "
                    "ANALYTICS_PROXY_ADMIN_TOKEN)"
                ) from None
            raise TailError(f"{self._url}: HTTP {exc.code}") from None
        except (OSError, ValueError):
            raise TailError(f"cannot reach {self._url}: is the proxy running?") from None
        newest = answer.get("newest")
        if isinstance(newest, str) and newest.isdigit():
            self._newest = int(newest)
        return list(answer.get("records", []))

    def recent(self, limit: int) -> list[Record]:
        return self._get(limit=str(limit))

    def after(self, after_id: str) -> list[Record]:
        records = self._get(after=after_id, limit=str(MAX_LIMIT))
        if not records and self._newest is not None and self._newest < int(after_id):
            # The process restarted and numbers its ring from 1 again.
            records = self._get(after=self.start_id, limit=str(MAX_LIMIT))
        if not records:
            time.sleep(POLL_INTERVAL)
        return records


def admin_url(config: Config) -> str:
    host = config.admin.host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.admin.port}"


def tail(
    config: Config,
    *,
    url: str | None = None,
    follow: bool = False,
    limit: int = DEFAULT_LIMIT,
    as_json: bool = False,
    out: IO[str] | None = None,
) -> int:
    """Print the newest ``limit`` records, then (``follow``) new ones as they come."""
    stream = out or sys.stdout
    source: _Source
    if url is None and config.state.redis_url:
        source = RedisSource(config.state.redis_url)
    else:
        source = HttpSource(url or admin_url(config), config.admin.token)

    def emit(records: list[Record]) -> None:
        for record in records:
            if as_json:
                print(json.dumps(record, ensure_ascii=False), file=stream, flush=follow)
            else:
                print(format_record(record), file=stream, flush=follow)

    try:
        records = source.recent(min(limit, MAX_LIMIT))
        emit(records)
        last = records[-1]["id"] if records else source.start_id
        while follow:
            records = source.after(last)
            emit(records)
            if records:
                last = records[-1]["id"]
    except TailError as exc:
        print(f"analytics-proxy: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


_LABELS = {"forwarded": "FORWARD", "dropped": "DROP"}


def format_record(record: Mapping[str, Any]) -> str:
    """One line for the decision, then the consent readings and the parameters indented."""
    consent = record.get("consent") or {}
    why = str(record.get("reason"))
    if record.get("detail"):
        why += f" ({record['detail']})"
    if consent.get("source"):
        why += f" by {consent['source']}"
    parts = [
        str(record.get("minute")),
        str(record.get("tid") or "-"),
        _LABELS.get(str(record.get("decision")), "?"),
        why,
        f"regime: {record.get('regime') or '-'}",
    ]
    if record.get("location"):
        parts.append(f"location: {record['location']}")
    parts += [f"events: {record.get('events', 0)}", f"#{record.get('id', '')}"]
    lines = ["  ".join(parts)]
    if consent:
        said = [f"{k}={v}" for k, v in (consent.get("readings") or {}).items()]
        lines.append(f"    consent: {' '.join(said) or 'none (every source abstained)'}")
    # Parameters grouped by what happened to them: one line per scope, action and rule.
    groups: dict[tuple[str, str, str], list[str]] = {}
    for p in record.get("params") or ():
        name = str(p.get("name")) + (f" x{p['count']}" if p.get("count", 1) != 1 else "")
        action = str(p.get("action"))
        rule = "" if action == Action.KEPT.value else str(p.get("rule"))
        if p.get("detail"):
            rule += f" [{', '.join(map(str, p['detail']))}]"
        groups.setdefault((str(p.get("scope")), action, rule), []).append(name)
    for (scope, action, rule), names in groups.items():
        lines.append(f"    {scope:<8} {action:<11} {rule + ': ' if rule else ''}{' '.join(names)}")
    return "\n".join(lines)
