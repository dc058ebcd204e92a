"""The outbox in a Redis stream, read through a consumer group so any replica drains it:
entries are claimed, their claim renewed while they are sent, and acknowledged once settled;
durable puts share their round trips (group commits). See ``proxy.delivery.outbox`` for
what an entry holds and why entries expire."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from redis.typing import EncodableT, FieldT

from proxy.delivery.outbound import BEACON, OutboundRequest
from proxy.delivery.outbox import (
    DEFAULT_BATCH,
    DEFAULT_MAX_AGE,
    Backoff,
    Deliver,
    Entry,
    MemorySpill,
    settle,
)
from proxy.observe.metrics import Metrics
from proxy.state.periodic import raise_if_cancelled
from proxy.state.salts import KEY_PREFIX

log = logging.getLogger(__name__)

STREAM_KEY = KEY_PREFIX + "outbox"
GROUP = "forwarders"
BLOCK_SECONDS = 1.0  # longest wait on an empty stream, so claims and shutdown stay prompt
RECONNECT_MAX = 5.0  # seconds between attempts to reach Redis again
ACK_ON_CANCEL_TIMEOUT = 1.0
# Renew our claim on entries being sent (their idle time back to 0), only on those still
# ours: an entry another consumer took over is not taken back (both would send it).
RENEW_SCRIPT = """
local renewed = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    renewed = renewed + 1
  end
end
return renewed
"""
MAX_UNACKED = 100_000  # settled ids whose acknowledgement failed, kept to retry it
COMMIT_WINDOW = 0.002  # seconds a durable put waits for others to share its round trip
COMMIT_MAX = 256  # entries per group commit
MAX_CHUNK = 500  # entries per MULTI when many are added at once (shutdown, reconnect)
# redis-py wraps socket errors, but a timeout or reset can surface unwrapped on some paths.
UNREACHABLE = (RedisError, OSError)


def consumer_name() -> str:
    """Unique per process: a restarted replica must not inherit a dead one's identity."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(entry: Entry) -> dict[FieldT, EncodableT]:
    request, accepted_at = entry
    fields: dict[FieldT, EncodableT] = {
        "q": request.query,
        "b": request.body,
        "ua": request.user_agent,
        "t": f"{accepted_at:.3f}",
    }
    if request.kind != BEACON:
        fields["k"] = request.kind  # absent on /g/collect hits, as in entries written before
    return fields


def _entry(fields: dict[Any, Any]) -> Entry:
    values = {_text(k): _text(v) for k, v in fields.items()}
    request = OutboundRequest(query=values["q"], body=values["b"], user_agent=values["ua"],
                              kind=values.get("k", BEACON))
    return request, float(values["t"])


class RedisSpill:
    """A Redis stream read through a consumer group, so any replica drains it.

    XADD with ``MAXLEN ~`` caps the stream; an entry is acknowledged and deleted only after
    ``deliver`` settled it; entries another consumer left idle longer than ``claim_idle``
    (it died, or its sends fail) are taken over with XAUTOCLAIM. While Redis is unreachable
    new entries go to a bounded ``MemorySpill``, moved to the stream once Redis is back.
    """

    def __init__(
        self,
        client: Redis,
        *,
        stream_maxlen: int,
        max_age: float = DEFAULT_MAX_AGE,
        claim_idle: float = 30.0,
        consumer: str | None = None,
        memory_size: int = 10_000,
        metrics: Metrics | None = None,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        batch: int = DEFAULT_BATCH,
        key: str = STREAM_KEY,
        group: str = GROUP,
    ) -> None:
        self._client = client
        self._maxlen = stream_maxlen
        self._max_age = max_age
        self._claim_idle_ms = max(1, int(claim_idle * 1000))
        self._claim_every = min(max(claim_idle / 2, 0.05), 10.0)
        self._block_ms = int(min(BLOCK_SECONDS, self._claim_every) * 1000)
        self.consumer = consumer or consumer_name()
        self._metrics = metrics or Metrics()
        self._backoff = (backoff_initial, backoff_max)
        self._batch = batch
        self._key, self._group = key, group
        self._fallback = MemorySpill(
            memory_size,
            max_age=max_age,
            metrics=self._metrics,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            batch=batch,
        )
        self._available = True  # optimistic; the first Redis error sends puts to memory
        self._group_ready = False
        self._retry_own = True  # our own pending entries first (none for a new consumer)
        self._next_claim = 0.0
        self._claim_cursor = "0-0"
        self._last_length = 0
        self._closed = False
        # Entries Google took whose XACK failed (Redis unreachable): acknowledged before
        # anything is read again, or reading our own pending entries would send them twice.
        self._unacked: list[Any] = []
        # Durable puts waiting for their group commit: (entry, future of "held").
        self._commits: list[tuple[Entry, asyncio.Future[bool]]] = []
        self._committer: asyncio.Task[None] | None = None
        self._renew = client.register_script(RENEW_SCRIPT)

    @property
    def durable(self) -> bool:
        return self._available and len(self._fallback) == 0

    @property
    def capacity(self) -> int:
        return self._maxlen

    @property
    def available(self) -> bool:
        """False from a failed Redis command until the drain loop reached Redis again."""
        return self._available

    def has_room(self) -> bool:
        # The stream trims at its cap rather than refuse; while Redis is unreachable, or
        # once closed, entries go to the memory fallback.
        return (self._available and not self._closed) or self._fallback.has_room()

    async def put(self, request: OutboundRequest, accepted_at: float) -> bool:
        return await self.put_many([(request, accepted_at)]) == 1

    async def put_many(self, entries: Sequence[Entry]) -> int:
        held = 0
        while held < len(entries) and self._available and not self._closed:
            chunk = entries[held : held + MAX_CHUNK]
            try:
                await self._add(chunk)
            except UNREACHABLE:
                self._unreachable()
                break
            held += len(chunk)
        return held + await self._fallback.put_many(entries[held:])

    async def _add(self, entries: Sequence[Entry]) -> None:
        # Lengths around the XADDs, atomically, count what MAXLEN trimmed: not silent.
        pipe = self._client.pipeline(transaction=True)
        pipe.xlen(self._key)
        for entry in entries:
            pipe.xadd(self._key, _fields(entry), maxlen=self._maxlen, approximate=True)
        pipe.xlen(self._key)
        results = await pipe.execute()
        before, after = int(results[0]), int(results[-1])
        self._last_length = after
        trimmed = before + len(entries) - after
        if trimmed > 0:
            self._metrics.outbox_trimmed.inc(trimmed)

    async def commit(self, request: OutboundRequest, accepted_at: float) -> bool:
        """Hold ``request`` in the stream itself, never in memory: True once Redis has it.
        Puts arriving within a few milliseconds share one round trip (a group commit)."""
        if self._closed or not self._available:
            return False
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._commits.append(((request, accepted_at), future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_round(), name="outbox-commit")
        return await asyncio.shield(future)

    async def _commit_round(self) -> None:
        while self._commits:
            await asyncio.sleep(COMMIT_WINDOW)
            batch, self._commits = self._commits[:COMMIT_MAX], self._commits[COMMIT_MAX:]
            try:
                await self._add([entry for entry, _ in batch])
                held = True
            except UNREACHABLE:
                self._unreachable()
                held = False
            except Exception:
                log.exception("outbox commit error")
                held = False
            for _, future in batch:
                if not future.done():
                    future.set_result(held)

    @property
    def shared(self) -> bool:
        return True

    async def depth(self, *, include_shared: bool = True) -> int:
        if not include_shared:
            return len(self._fallback)
        if self._available:
            try:
                self._last_length = int(await self._client.xlen(self._key))
            except UNREACHABLE:
                self._unreachable()
        return self._last_length + len(self._fallback)

    def _unreachable(self) -> None:
        if self._available:
            log.warning("outbox redis unreachable, holding beacons in memory")
        self._available = False
        self._group_ready = False
        # A read cut off by the failure may have assigned entries to us unseen: re-read ours.
        self._retry_own = True

    async def run(self, deliver: Deliver) -> None:
        # Memory-held entries are delivered directly too: Google may be up while Redis is not.
        fallback = asyncio.create_task(self._fallback.run(deliver), name="outbox-memory")
        backoff = Backoff(*self._backoff)
        reconnect = Backoff(self._backoff[0], RECONNECT_MAX)
        try:
            while True:
                raise_if_cancelled()
                try:
                    if not self._group_ready:
                        await self._connect()
                        reconnect.reset()
                    if self._unacked:
                        await self._ack(self._unacked)
                        self._unacked = []
                    entries = await self._next_entries(1 if backoff.failing else self._batch)
                    if not entries:
                        continue
                    if await self._process(entries, deliver):
                        backoff.reset()
                    else:
                        self._retry_own = True
                        await backoff.wait()
                except ResponseError as exc:
                    self._group_ready = False
                    if "NOGROUP" not in str(exc):
                        log.error("outbox redis refused a command", extra={"reason": "error"})
                        await reconnect.wait()
                    # NOGROUP: the stream was deleted (flush, restart): create it again.
                except UNREACHABLE:
                    self._unreachable()
                    await reconnect.wait()
        finally:
            fallback.cancel()
            await asyncio.gather(fallback, return_exceptions=True)

    async def _connect(self) -> None:
        try:
            # From the start, "0": entries added before the group existed are read too.
            await self._client.xgroup_create(self._key, self._group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True
        if not self._available:
            self._available = True
            moved = await self._move_fallback()
            log.info("outbox redis reachable again", extra={"count": moved})

    async def _move_fallback(self) -> int:
        moved = 0
        while len(self._fallback) and self._available:
            chunk = self._fallback.take(MAX_CHUNK)
            if not chunk:
                break  # the rest is being delivered by the memory loop right now
            try:
                await self._add(chunk)
            except UNREACHABLE:
                self._fallback.give_back(chunk)
                self._unreachable()
                break
            moved += len(chunk)
        return moved

    async def _next_entries(self, count: int) -> list[tuple[Any, Any]]:
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + self._claim_every
            reply = await self._client.xautoclaim(
                self._key, self._group, self.consumer, self._claim_idle_ms,
                start_id=self._claim_cursor, count=count,
            )
            cursor, claimed = reply[0], reply[1]
            self._claim_cursor = _text(cursor)
            if self._claim_cursor != "0-0":
                self._next_claim = now  # more to scan: continue on the next round
            if any(entry_id is None for entry_id, _ in claimed):
                # Redis 6.2 hides the id of a claimed entry that was trimmed meanwhile; our
                # own history read below shows it (empty), and then it is acknowledged.
                self._retry_own = True
            claimed = [(i, f) for i, f in claimed if i is not None]
            if claimed:
                self._metrics.outbox_claimed.inc(len(claimed))
                return claimed
        if self._retry_own:
            own = self._stream_entries(
                await self._client.xreadgroup(
                    self._group, self.consumer, {self._key: "0"}, count=count
                )
            )
            if own:
                return own
            self._retry_own = False
        return self._stream_entries(
            await self._client.xreadgroup(
                self._group, self.consumer, {self._key: ">"}, count=count, block=self._block_ms
            )
        )

    @staticmethod
    def _stream_entries(reply: Any) -> list[tuple[Any, Any]]:
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3
            return [e for entries in reply.values() for e in (entries[0] if entries else [])]
        return [e for _, entries in reply for e in entries]

    async def _process(self, entries: list[tuple[Any, Any]], deliver: Deliver) -> bool:
        """Deliver a round; acknowledge and delete what is settled. True if all were."""
        settled: list[Any] = []
        pending: list[tuple[Any, OutboundRequest]] = []
        for entry_id, fields in entries:
            if not fields:  # trimmed while pending: nothing left to deliver
                settled.append(entry_id)
                continue
            try:
                request, accepted_at = _entry(fields)
            except (KeyError, ValueError, UnicodeDecodeError):
                log.error("outbox entry unreadable, discarded")
                self._metrics.lost("outbox_unreadable")
                settled.append(entry_id)
                continue
            if time.time() - accepted_at > self._max_age:
                self._metrics.expired.inc()
                settled.append(entry_id)
            else:
                pending.append((entry_id, request))

        async def one(entry_id: Any, request: OutboundRequest) -> bool:
            if await settle(deliver, request):
                self._metrics.outbox_delivered.inc()
                settled.append(entry_id)
                return True
            return False

        # While the round is sent, our claim on its entries is renewed, so a round slowed down
        # (waiting for a connection, a slow Google) is never taken over and sent twice.
        renewing = self._keep_claimed([i for i, _ in pending])
        heartbeat = asyncio.ensure_future(renewing)  # cancelled and awaited below
        try:
            results = await asyncio.gather(*(one(i, r) for i, r in pending))
        except asyncio.CancelledError:
            # Acknowledge what Google already took, so no other replica sends it again.
            try:
                await asyncio.wait_for(self._ack(settled), ACK_ON_CANCEL_TIMEOUT)
            except (*UNREACHABLE, TimeoutError):
                self._remember_unacked(settled)  # close() tries once more
            raise
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
        try:
            await self._ack(settled)
        except UNREACHABLE:
            self._remember_unacked(settled)
            raise
        return all(results)

    def _remember_unacked(self, ids: list[Any]) -> None:
        room = MAX_UNACKED - len(self._unacked)
        self._unacked.extend(ids[:room])
        if len(ids) > room:
            log.error("outbox: too many unacknowledged entries", extra={"count": len(ids) - room})

    async def _keep_claimed(self, ids: list[Any]) -> None:
        if not ids:
            return
        while True:
            await asyncio.sleep(self._claim_idle_ms / 3000)
            with contextlib.suppress(*UNREACHABLE):
                await self._renew(keys=[self._key], args=[self._group, self.consumer, *ids])

    async def _ack(self, ids: list[Any]) -> None:
        if not ids:
            return
        pipe = self._client.pipeline(transaction=False)
        pipe.xack(self._key, self._group, *ids)
        pipe.xdel(self._key, *ids)
        await pipe.execute()

    async def close(self) -> int:
        """Move memory-held entries to Redis if it is reachable; returns what could not be."""
        if self._closed:
            return 0
        self._closed = True
        if self._committer is not None:
            await asyncio.gather(self._committer, return_exceptions=True)
        if self._unacked:
            with contextlib.suppress(*UNREACHABLE):
                await self._ack(self._unacked)
                self._unacked = []
        if len(self._fallback):
            with contextlib.suppress(*UNREACHABLE):
                await self._client.ping()
                self._available = True
            await self._move_fallback()
        with contextlib.suppress(*UNREACHABLE):
            await self._forget_consumer()
        return await self._fallback.close()

    async def _forget_consumer(self) -> None:
        # A consumer without pending entries is only clutter in XINFO; one with pending
        # entries must stay until another replica claimed them (DELCONSUMER drops them).
        pending = await self._client.xpending_range(
            self._key, self._group, "-", "+", 1, consumername=self.consumer
        )
        if not pending:
            await self._client.xgroup_delconsumer(self._key, self._group, self.consumer)
