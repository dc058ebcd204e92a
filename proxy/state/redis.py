"""The shared state store for several replicas: Redis through redis-py's asyncio client.

Every key starts with ``KEY_PREFIX``, whose ``{…}`` hash tag puts all of the proxy's keys in
one Redis Cluster slot, so scripts and pipelines over several of them stay legal there.
"""

from __future__ import annotations

import math
import secrets

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from proxy.state.salts import KEY_PREFIX, SALT_BYTES

SALT_PREFIX = KEY_PREFIX + "salt:"
DEFAULT_MAX_CONNECTIONS = 16
DEFAULT_TIMEOUT = 0.5  # seconds: connect, read, and waiting for a free pooled connection
HEALTH_CHECK_INTERVAL = 15  # seconds idle before a pooled connection is PINGed before use
RETRIES = 2  # per command, after the first attempt, on connection errors and timeouts
BACKOFF_BASE = 0.05
BACKOFF_CAP = 0.5

# Get the window's salt, or store the caller's fresh one: one atomic step, so two replicas
# racing at a window boundary still end up with the same salt.
SALT_SCRIPT = """
local salt = redis.call('GET', KEYS[1])
if salt then
  return salt
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return ARGV[1]
"""


class RedisState:
    """Salts shared through Redis, expiring with their window (``EX``)."""

    source = "redis"

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        # Bounded: when every connection is busy a caller waits ``timeout`` for one, then
        # fails like any other Redis error instead of opening connections without limit.
        self._pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(ExponentialBackoff(cap=BACKOFF_CAP, base=BACKOFF_BASE), RETRIES),
            health_check_interval=HEALTH_CHECK_INTERVAL,
        )
        self._client: Redis = Redis.from_pool(self._pool)
        # EVALSHA, loading the script again by itself after a Redis restart forgot it.
        self._salt_script: AsyncScript = self._client.register_script(SALT_SCRIPT)

    @property
    def client(self) -> Redis:
        """The client over this store's bounded pool, for other state sharing the connection."""
        return self._client

    async def salt_for(self, window: int, ttl: float) -> bytes:
        # EX takes whole seconds; rounding up never expires a salt before its window ends.
        seconds = max(1, math.ceil(ttl))
        salt = await self._salt_script(
            keys=[f"{SALT_PREFIX}{window}"], args=[secrets.token_bytes(SALT_BYTES), seconds]
        )
        if not isinstance(salt, bytes) or len(salt) != SALT_BYTES:
            raise RedisError("the stored salt has an unexpected shape")
        return salt

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except Exception:
            return False

    async def close(self) -> None:
        # The client owns the pool (from_pool): closing it disconnects every connection.
        await self._client.aclose()
