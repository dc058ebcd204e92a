"""Real ``python -m proxy serve`` processes for the tests that must cross a process boundary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.redis_server import free_port

ROOT = Path(__file__).parent.parent


def start_serve(
    tmp_path: Path, name: str, extra_yaml: str, *args: str, admin_token: str | None = None
) -> tuple[subprocess.Popen[str], int, int]:
    """Write a config on two free loopback ports plus ``extra_yaml`` and start serving it.

    Returns the process, the public port and the admin port.
    """
    port, admin = free_port(), free_port()
    token = f", token: {json.dumps(admin_token)}" if admin_token else ""
    config = tmp_path / f"{name}.yaml"
    token = f", token: {admin_token}" if admin_token else ""
    config.write_text(f"listen: {{host: 127.0.0.1, port: {port}}}\n"
                      f"admin: {{host: 127.0.0.1, port: {admin}{token}}}\n" + extra_yaml)
    # The file alone decides: no override from the environment running the tests.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_PROXY_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--config", str(config), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    return proc, port, admin


def wait_until_up(port: int, path: str = "/healthz") -> None:
    for _ in range(150):  # bounded wait for the port to open
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the proxy did not come up")
