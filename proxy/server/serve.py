"""Running both applications until a signal: the public port and the admin port."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

from aiohttp import web

from proxy.config import Config
from proxy.delivery.forward import Sender
from proxy.observe.audit import make_audit
from proxy.observe.metrics import Metrics
from proxy.server.admin import admin_runner, init_admin_app
from proxy.server.public import init_app, public_runner
from proxy.server.wiring import begin_shutdown
from proxy.state.visitors import DailyVisitors

log = logging.getLogger(__name__)

async def run(
    config: Config,
    *,
    sender: Sender | None = None,
    reuse_port: bool = False,
    serve_admin: bool = True,
) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully. With ``--workers`` every
    worker shares the public port (``reuse_port``) and only one serves the admin port."""
    metrics = Metrics(primary=serve_admin)  # worker 0 reports the shared outbox
    audit = make_audit(config, metrics)
    visitors = DailyVisitors()
    app = init_app(config, metrics, sender, audit, visitors)
    runners = [public_runner(app)]
    if serve_admin:
        admin = init_admin_app(config, metrics, audit, visitors=visitors)
        runners.append(admin_runner(admin))
    for runner in runners:
        await runner.setup()
    sites = [
        web.TCPSite(
            runners[0], config.listen.host, config.listen.port, reuse_port=reuse_port or None
        )
    ]
    if serve_admin:
        sites.append(web.TCPSite(runners[1], config.admin.host, config.admin.port))
    for site in sites:
        await site.start()
    # What start-up built (parsers, detector tables, the tag) lives as long as the process:
    # out of the cyclic collector's sight, which then walks only what serving allocates.
    gc.freeze()
    log.info(
        "serving",
        extra={
            "host": config.listen.host,
            "port": config.listen.port,
            "profile": config.privacy.profile,
            "upstream": "dry-run" if config.dry_run else config.upstream.url,
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    up = config.upstream
    log.info("shutting down", extra={"deadline": up.shutdown_deadline})
    begin_shutdown(app)
    # Still serving: load balancers see /readyz fail and stop sending before we stop.
    await asyncio.sleep(up.shutdown_grace)
    # Public first: stop accepting, finish requests in progress, then the outbox's
    # shutdown (cleanup contexts). Admin last, so /metrics can be read to the end.
    for runner in runners:
        await runner.cleanup()
