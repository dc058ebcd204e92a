"""Where audit records are stored: a ring in this process's memory, or a capped Redis
Stream shared by every process and replica when ``state.redis_url`` is set.

Recording never waits: a record is built in memory at once (so no value outlives the
request) and a background task writes queued records to Redis in batches. A full queue or an
unreachable Redis drops records, counted in
``analytics_proxy_audit_records_total{outcome="dropped"}``; the beacon never notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import re
import time
from collections import deque
from collections.abc import Mapping, Sequence

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.config import Config
from proxy.observe.audit.record import (
    Record,
    RecordBuilder,
    decode_entries,
    decode_record,
    encode_record,
)
from proxy.observe.metrics import Metrics
from proxy.pipeline import Outcome
from proxy.state.periodic import raise_if_cancelled
from proxy.state.salts import KEY_PREFIX

log = logging.getLogger(__name__)

STREAM_KEY = KEY_PREFIX + "audit"
QUEUE_SIZE = 10_000  # records waiting for Redis; past it they are dropped and counted
BATCH = 256  # records per round trip
FLUSH_DELAY = 0.25  # seconds the writer lets records gather before one round trip
REDIS_TIMEOUT = 2.0
CLOSE_TIMEOUT = 2.0  # at shutdown, how long queued records may take to reach Redis
DEFAULT_LIMIT = 20
MAX_LIMIT = 1000
UNREACHABLE = (RedisError, OSError)

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
        self._ring.append(encode_record(record))
        self._written.inc()

    async def recent(self, limit: int) -> list[Record]:
        start = max(0, len(self._ring) - limit)
        return [decode_record(r) for r in itertools.islice(self._ring, start, None)]

    async def after(self, after_id: str, limit: int) -> list[Record]:
        # Ids are consecutive, so the position of the first newer record is arithmetic.
        first = self._next - len(self._ring)
        start = max(0, int(after_id) + 1 - first)
        return [decode_record(r) for r in itertools.islice(self._ring, start, start + limit)]

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
        self._queue.append(encode_record(record))
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



def parse_page(query: Mapping[str, str], trail: AuditTrail) -> tuple[int, str | None]:
    """``limit`` and ``after`` of ``GET /audit``; ValueError names the bad one."""
    text = query.get("limit", str(DEFAULT_LIMIT))
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise ValueError(f"limit: a number from 1 to {MAX_LIMIT}")
    after = query.get("after") or None
    if after is not None and not trail.valid_id(after):
        raise ValueError("after: not a record id of this trail")
    return int(text), after
