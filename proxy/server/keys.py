"""The keys under which the applications keep their parts, and the health they report."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from proxy.config import Config
from proxy.delivery.forward import Outbox
from proxy.delivery.outbox import Spill
from proxy.ingest.client import ClientAddressResolver
from proxy.observe.audit import AuditTrail
from proxy.observe.metrics import Metrics
from proxy.pipeline import Pipeline
from proxy.server.mp import MeasurementProtocolService
from proxy.server.turns import InTurn
from proxy.state.visitors import DailyVisitors
from proxy.tag.service import TagService
from proxy.tag.tracker import Tracker

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
PIPELINE = web.AppKey("pipeline", Pipeline)
TURNS = web.AppKey("turns", InTurn)
OUTBOX = web.AppKey("outbox", Outbox)
RESOLVER = web.AppKey("resolver", ClientAddressResolver)
READY = web.AppKey("ready", asyncio.Event)  # set while the upstream sender is open
SPILL: web.AppKey[Spill] = web.AppKey("spill")
AUDIT = web.AppKey("audit", AuditTrail)
VISITORS = web.AppKey("visitors", DailyVisitors)
TAG = web.AppKey("tag", TagService)
MP = web.AppKey("mp", MeasurementProtocolService)
TRACKER = web.AppKey("tracker", Tracker)


@dataclass
class Health:
    """What /readyz answers from: kept current in the background, never probed per request."""

    shutting_down: bool = False
    redis_ok: bool | None = None  # None: no Redis configured


HEALTH = web.AppKey("health", Health)
