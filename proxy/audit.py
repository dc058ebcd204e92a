"""The privacy audit trail: what happened to a beacon, recorded without its personal values.

Every dropped beacon and a sample (``audit.sample``) of forwarded ones become one record:
the minute, the site's measurement id, the decision and its reason, the consent verdict with
the reading of every source that did not abstain (the others counted), the regime, the
location level sent, the number of events, and for sampled forwarded beacons each
parameter's name with what was done to it and by which rule.
Values never enter a record: ``Change.before``/``after`` are read by nobody here, and a
parameter *name* that the compiled policy does not know (``?jane@example.com=1``,
``ep.<anything not allow-listed>``) is counted under ``(other)``, never written out.

Storage is a capped Redis Stream shared by every process and replica when ``state.redis_url``
is set, else a ring in this process's memory. Recording never waits: a record is built in
memory at once (so no value outlives the request) and a background task writes queued
records to Redis in batches. A full queue or an unreachable Redis drops records, counted in
``analytics_proxy_audit_records_total{outcome="dropped"}``; the beacon never notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any, Protocol

import msgspec
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.config import Config
from proxy.consent.verdict import Verdict
from proxy.metrics import Metrics
from proxy.periodic import raise_if_cancelled
from proxy.pipeline import Outcome
from proxy.policy import Action, compile_policy
from proxy.sanitize.sanitizer import Change
from proxy.state import KEY_PREFIX

log = logging.getLogger(__name__)

Record = dict[str, Any]
# Records are kept encoded: one bytes object each is nothing for the cyclic garbage collector
# to scan, where a ring of dicts of dicts would slow every collection of the process.
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

STREAM_KEY = KEY_PREFIX + "audit"
OTHER = "(other)"  # stands for any name or code that is not known to be safe to write
QUEUE_SIZE = 10_000  # records waiting for Redis; past it they are dropped and counted
BATCH = 256  # records per round trip
FLUSH_DELAY = 0.25  # seconds the writer lets records gather before one round trip
REDIS_TIMEOUT = 2.0
CLOSE_TIMEOUT = 2.0  # at shutdown, how long queued records may take to reach Redis
DEFAULT_LIMIT = 20
MAX_LIMIT = 1000
FOLLOW_BLOCK_MS = 5000  # XREAD BLOCK per round of ``audit tail --follow`` on Redis
POLL_INTERVAL = 1.0  # seconds between admin requests of ``audit tail --follow``
UNREACHABLE = (RedisError, OSError)

# Written only when they match: a name as the policy spells them, a code as rules emit them.
_NAME = re.compile(r"[A-Za-z0-9_]{1,40}(\.[A-Za-z0-9_]{1,40})?")
_CODE = re.compile(r"[a-z0-9_-]{1,40}")
_SCOPE = re.compile(r"query|event \d{1,3}")
_MEMORY_ID = re.compile(r"\d{1,19}")
_STREAM_ID = re.compile(r"\d{1,19}-\d{1,19}")

# One round trip per batch. The entry id's time part is the minute of writing, never the
# millisecond (a stream's auto id would date each record exactly). Ids must grow, so a
# writer whose minute is behind the stream's newest id (a late batch, a replica's clock)
# continues after it. Redis 6.2 has no "<ms>-*" ids, hence the sequence kept here.
_XADD_BATCH = """
local ms, seq = tonumber(ARGV[1]), 0
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if top then
  local tms, tseq = string.match(top[1], '^(%d+)-(%d+)$')
  tms, tseq = tonumber(tms), tonumber(tseq)
  if tms >= ms then ms, seq = tms, tseq + 1 end
end
for i = 3, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], string.format('%d-%d', ms, seq),
             'r', ARGV[i])
  seq = seq + 1
end
return #ARGV - 2
"""


class AuditUnavailable(RuntimeError):
    """The trail's store cannot be read now (Redis unreachable)."""


def known_names(config: Config) -> frozenset[str]:
    """Parameter names safe to write: those the compiled policy has a rule for (so
    ``ep.<name>`` only for allow-listed names), and only in the shape the policy uses."""
    policy = compile_policy(config.privacy, config.allowed_origins)
    return frozenset(n for n in (*policy.table, *policy.forced) if _NAME.fullmatch(n))


def query_tid(query: str) -> str | None:
    """The raw ``tid`` of a query string, found without parsing the rest."""
    start = 0
    while (at := query.find("tid=", start)) >= 0:
        if at == 0 or query[at - 1] == "&":
            end = query.find("&", at)
            return query[at + 4 : end if end >= 0 else None]
        start = at + 4
    return None


_ACTIONS = {action: action.value for action in Action}
MEMO_SIZE = 4096  # codes remembered as checked (rule names, reasons, scopes: a few hundred)


def _checked(memo: dict[str, str], pattern: re.Pattern[str], text: str | None) -> str | None:
    if not text:
        return None
    known = memo.get(text)
    if known is not None:
        return known
    if not pattern.fullmatch(text):
        return OTHER
    if len(memo) < MEMO_SIZE:
        memo[text] = text
    return text


class RecordBuilder:
    """Turns an ``Outcome`` into a record of codes and known names; compiled once. Built on
    the request path for every drop, so checks of codes are remembered, not repeated."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self._tids = frozenset(config.measurement_ids)
        self._names = known_names(config)
        self._clock = clock
        self._minute = -1
        self._minute_text = ""
        # Texts already found to be codes (never any other text: it could be anything).
        self._codes: dict[str, str] = {}
        self._scopes: dict[str, str] = {}

    def code(self, text: str | None) -> str | None:
        """``text`` when it is a code, else the placeholder; None for nothing."""
        return _checked(self._codes, _CODE, text)

    def scope(self, text: str) -> str:
        return _checked(self._scopes, _SCOPE, text) or OTHER

    def minute(self) -> str:
        minute = int(self._clock() // 60)
        if minute != self._minute:
            self._minute = minute
            self._minute_text = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(minute * 60))
        return self._minute_text

    def tid(self, query: str, parsed: str = "") -> str | None:
        """The pipeline's parsed tid when it got that far, else the raw query's."""
        tid = parsed or query_tid(query)
        if tid is None:
            return None
        # A measurement id names the site, not the visitor; anything else may be anything.
        return tid if tid in self._tids else OTHER

    def build(self, outcome: Outcome, query: str, decision: str) -> Record:
        code = self.code
        consent = outcome.consent
        readings = None
        if consent is not None:
            # Sources that abstained (most, on most beacons) are counted, not listed.
            said = {
                code(name) or OTHER: verdict.value
                for name, verdict in consent.verdicts
                if verdict is not Verdict.ABSTAIN
            }
            readings = {
                "source": code(consent.source),
                "verdict": code(consent.reason),
                "readings": said,
                "abstained": len(consent.verdicts) - len(said),
            }
        return {
            "minute": self.minute(),
            "tid": self.tid(query, outcome.tid),
            "decision": decision,
            "reason": code(outcome.reason),
            "detail": code(outcome.detail),
            "regime": outcome.regime.value if outcome.regime else None,
            "consent": readings,
            "location": code(outcome.location_level),
            "events": outcome.events,
            "params": self.params(outcome.changes, outcome.location_level)
            if outcome.changes
            else [],
        }

    def drop(self, reason: str, query: str) -> Record:
        """A beacon dropped by the server before the pipeline saw it (too large, error)."""
        return {
            "minute": self.minute(),
            "tid": self.tid(query),
            "decision": "dropped",
            "reason": self.code(reason),
            "detail": None,
            "regime": None,
            "consent": None,
            "location": None,
            "events": 0,
            "params": [],
        }

    def params(self, changes: Iterable[Change], location: str = "") -> list[dict[str, Any]]:
        code, names = self.code, self._names
        out: list[dict[str, Any]] = []
        others: dict[tuple[str, str, str], int] = {}
        for change in changes:
            scope = self.scope(change.scope)
            action, rule = _ACTIONS[change.action], code(change.rule) or OTHER
            if change.param in names:
                detail = [d for d in change.detail if code(d) == d] if change.detail else []
                if change.param == "_uip" and location and code(location) == location:
                    detail.append(location)  # the level the address was generalised to
                out.append(
                    {"scope": scope, "name": change.param, "action": action, "rule": rule,
                     "detail": detail, "count": 1}
                )
            else:
                key = (scope, action, rule)
                others[key] = others.get(key, 0) + 1
        for (scope, action, rule), count in others.items():
            out.append(
                {"scope": scope, "name": OTHER, "action": action, "rule": rule, "detail": [],
                 "count": count}
            )
        return out


class AuditTrail:
    """Sampling and recording; subclasses store. ``recent`` and ``after`` return records
    oldest first, each with its ``id``; they raise ``AuditUnavailable`` when the store
    cannot be read."""

    storage = "memory"

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self._sample = config.audit.sample
        self._max_records = config.audit.max_records
        self._builder = RecordBuilder(config)
        self._written = metrics.audit_records.labels("written")
        self._dropped = metrics.audit_records.labels("dropped")

    def sample(self) -> bool:
        """Decide, before the pipeline runs, whether this beacon's parameters are traced."""
        p = self._sample
        return p >= 1.0 or (p > 0.0 and random.random() < p)

    def observe(self, outcome: Outcome, query: str, *, sampled: bool) -> None:
        """Record a dropped beacon always, a forwarded one when ``sampled``. Never raises."""
        if outcome.forward:
            if not sampled:
                return
            decision = "forwarded"
        else:
            decision = "dropped"
        try:
            self._store(self._builder.build(outcome, query, decision))
        except Exception:
            # A fault here must cost the record, never the beacon's answer.
            log.exception("audit record error")
            self._dropped.inc()

    def observe_drop(self, reason: str, query: str = "") -> None:
        """Record a drop decided by the server itself (no ``Outcome``). Never raises."""
        try:
            self._store(self._builder.drop(reason, query))
        except Exception:
            log.exception("audit record error")
            self._dropped.inc()

    def _store(self, record: Record) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def recent(self, limit: int) -> list[Record]:
        """The ``limit`` newest records, oldest first (what a dashboard shows)."""
        raise NotImplementedError

    async def after(self, after_id: str, limit: int) -> list[Record]:
        """Up to ``limit`` records newer than ``after_id``, oldest first (for following)."""
        raise NotImplementedError

    def valid_id(self, text: str) -> bool:
        return bool(_MEMORY_ID.fullmatch(text))

    def newest_id(self) -> str | None:
        """The id of the newest record, when cheap to know (lets a follower notice that a
        restarted process numbers its ring from 1 again)."""
        return None


class MemoryAuditTrail(AuditTrail):
    """A ring in this process's memory: the embedded default. Ids count up from 1."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        super().__init__(config, metrics)
        self._ring: deque[bytes] = deque(maxlen=self._max_records)
        self._next = 1

    def _store(self, record: Record) -> None:
        record["id"] = str(self._next)
        self._next += 1
        self._ring.append(_encode(record))
        self._written.inc()

    async def recent(self, limit: int) -> list[Record]:
        start = max(0, len(self._ring) - limit)
        return [_decode(r) for r in itertools.islice(self._ring, start, None)]

    async def after(self, after_id: str, limit: int) -> list[Record]:
        # Ids are consecutive, so the position of the first newer record is arithmetic.
        first = self._next - len(self._ring)
        start = max(0, int(after_id) + 1 - first)
        return [_decode(r) for r in itertools.islice(self._ring, start, start + limit)]

    def newest_id(self) -> str:
        return str(self._next - 1)

    @property
    def size(self) -> int:
        return len(self._ring)


def make_audit_redis(url: str) -> Redis:
    """The trail's own small client: short timeouts and no retries, so an unreachable Redis
    costs the writer one quick failure per batch and a dropped, counted batch."""
    return Redis.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT,
        socket_connect_timeout=REDIS_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
        max_connections=4,
    )


class RedisAuditTrail(AuditTrail):
    """A capped Redis Stream (``XADD MAXLEN ~ max_records``) shared by every process."""

    storage = "redis"

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        url: str,
        *,
        key: str = STREAM_KEY,
        queue_size: int = QUEUE_SIZE,
        client: Redis | None = None,
    ) -> None:
        super().__init__(config, metrics)
        self._url = url
        self._key = key
        self._queue: deque[bytes] = deque()
        self._queue_size = queue_size
        self._client = client
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._failing = False

    def _store(self, record: Record) -> None:
        if len(self._queue) >= self._queue_size:
            self._dropped.inc()
            return
        self._queue.append(_encode(record))
        if self._wake is not None and not self._wake.is_set():
            self._wake.set()

    async def start(self) -> None:
        if self._client is None:
            self._client = make_audit_redis(self._url)
        self._script = self._client.register_script(_XADD_BATCH)
        self._wake = asyncio.Event()
        if self._queue:
            self._wake.set()
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._client is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), CLOSE_TIMEOUT)
        if self._queue:
            self._dropped.inc(len(self._queue))
            self._queue.clear()
        await self._client.aclose()

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            raise_if_cancelled()
            await self._wake.wait()
            await asyncio.sleep(FLUSH_DELAY)  # let a batch gather: one round trip for many
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write everything queued now, in batches; on failure drop (and count) the lot."""
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            try:
                await self._write(batch)
            except UNREACHABLE:
                lost = len(batch) + len(self._queue)
                self._queue.clear()
                self._dropped.inc(lost)
                if not self._failing:
                    log.warning("audit redis unreachable, records dropped", extra={"count": lost})
                self._failing = True
                return
            except asyncio.CancelledError:
                self._dropped.inc(len(batch))
                raise
            if self._failing:
                log.info("audit redis reachable again")
                self._failing = False
            self._written.inc(len(batch))

    async def _write(self, batch: Sequence[bytes]) -> None:
        minute_ms = int(time.time() // 60) * 60_000
        await self._script(keys=[self._key], args=[minute_ms, self._max_records, *batch])

    def _reader(self) -> Redis:
        if self._client is None:
            raise AuditUnavailable("audit trail not started")
        return self._client

    async def recent(self, limit: int) -> list[Record]:
        try:
            rows = await self._reader().xrevrange(self._key, count=limit)
        except UNREACHABLE:
            raise AuditUnavailable("audit store unreachable") from None
        return list(decode_entries(reversed(rows or [])))

    async def after(self, after_id: str, limit: int) -> list[Record]:
        try:
            rows = await self._reader().xrange(self._key, min=f"({after_id}", count=limit)
        except UNREACHABLE:
            raise AuditUnavailable("audit store unreachable") from None
        return list(decode_entries(rows))

    def valid_id(self, text: str) -> bool:
        return bool(_STREAM_ID.fullmatch(text))


def make_audit(config: Config, metrics: Metrics) -> AuditTrail:
    """Redis when configured (every process and replica writes one stream), else memory."""
    if config.state.redis_url:
        return RedisAuditTrail(config, metrics, config.state.redis_url)
    return MemoryAuditTrail(config, metrics)


def decode_entries(rows: Any) -> Iterator[Record]:
    """Stream entries (id, fields) as records with their ids; foreign entries are skipped."""
    for entry_id, fields in rows or ():
        raw: Any = (fields or {}).get(b"r")
        try:
            record = _decode(raw)
        except (TypeError, msgspec.DecodeError):
            continue  # not one of ours
        if isinstance(record, dict):
            record["id"] = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            yield record


def parse_page(query: Mapping[str, str], trail: AuditTrail) -> tuple[int, str | None]:
    """``limit`` and ``after`` of ``GET /audit``; ValueError names the bad one."""
    text = query.get("limit", str(DEFAULT_LIMIT))
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise ValueError(f"limit: a number from 1 to {MAX_LIMIT}")
    after = query.get("after") or None
    if after is not None and not trail.valid_id(after):
        raise ValueError("after: not a record id of this trail")
    return int(text), after


# ``analytics-proxy audit tail``: reads the stream directly with Redis, else the admin port.


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
