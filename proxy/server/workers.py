"""``serve --workers N``: N processes share the public port through SO_REUSEPORT.

Worker 0 also serves the admin port. Prometheus metrics go through prometheus-client's
multiprocess mode, so ``/metrics`` adds up every worker. The parent only supervises: it
forwards SIGTERM/SIGINT, and if a worker dies it stops the rest and exits non-zero, so that
the orchestrator (Kubernetes, systemd) restarts the whole unit cleanly.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import FrameType

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STOP_TIMEOUT = 60.0  # seconds a worker may take for its graceful shutdown


def supervise(workers: int, target: Callable[[int], None]) -> int:
    """Run ``target(index)`` in ``workers`` spawned processes until they stop."""
    metrics_dir = tempfile.mkdtemp(prefix="analytics-proxy-metrics-")
    # Children inherit the variable; it must be set before they import prometheus_client.
    os.environ[MULTIPROC_ENV] = metrics_dir
    context = multiprocessing.get_context("spawn")
    procs: list[BaseProcess] = [
        context.Process(target=target, args=(index,), name=f"worker-{index}", daemon=False)
        for index in range(workers)
    ]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for proc in procs:
            proc.start()
        log.info("workers started", extra={"workers": workers})
        status = 0
        while any(proc.is_alive() for proc in procs):
            time.sleep(0.2)
            dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
            if dead and not stopping:
                log.error("a worker died; stopping the others", extra={"count": len(dead)})
                status = 1
                stop(signal.SIGTERM, None)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                status = 1
        if any(p.exitcode not in (0, -signal.SIGTERM) for p in procs):
            status = status or 1
        return status
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)
