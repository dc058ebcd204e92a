"""Measurement Protocol requests leave by their own endpoint, keep their kind through the
Redis outbox, and carry Google's secret only on the wire."""

from __future__ import annotations

import asyncio
import json
import time

from proxy.delivery.forward import event_count
from proxy.delivery.outbound import BEACON, MEASUREMENT_PROTOCOL, OutboundRequest
from proxy.delivery.redis_outbox import RedisSpill, _entry
from proxy.mp.credentials import Credentials
from proxy.mp.delivery import REFUSED, MeasurementProtocolSender, RoutedSender
from proxy.observe.metrics import Metrics
from proxy.server.wiring import make_redis
from tests.mp.conftest import SECRET, TID, TOKEN, mp_config

MP_REQUEST = OutboundRequest(
    f"measurement_id={TID}", json.dumps({"client_id": "1.2", "events": [{"name": "a"}] * 3}),
    "analytics-proxy/0", MEASUREMENT_PROTOCOL,
)
HIT = OutboundRequest(f"v=2&tid={TID}&cid=1.2", "en=page_view", "Mozilla/5.0")


class Recorder:
    def __init__(self) -> None:
        self.sent: list[OutboundRequest] = []
        self.closed = False

    async def send(self, request: OutboundRequest) -> int:
        self.sent.append(request)
        return 204

    async def close(self) -> None:
        self.closed = True


async def test_each_kind_goes_to_its_sender_and_the_secret_is_added_on_sending() -> None:
    beacons, wire = Recorder(), Recorder()
    mp = MeasurementProtocolSender(mp_config(None), Credentials({TID: (TOKEN, SECRET)}), wire)
    routed = RoutedSender(beacons, mp)
    assert await routed.send(HIT) == 204
    assert await routed.send(MP_REQUEST) == 204
    assert await routed.send(OutboundRequest("q", "b", "ua", "unknown-kind")) == REFUSED
    assert beacons.sent == [HIT]
    (sent,) = wire.sent
    assert sent.query == f"measurement_id={TID}&api_secret={SECRET}"
    assert sent.headers()["Content-Type"] == "application/json"
    assert SECRET not in MP_REQUEST.query  # what the outbox holds has none
    await routed.close()
    assert beacons.closed and wire.closed


async def test_without_the_secret_an_entry_is_refused_not_sent() -> None:
    wire = Recorder()
    mp = MeasurementProtocolSender(mp_config(None), Credentials(), wire)
    assert await mp.send(MP_REQUEST) == REFUSED
    assert wire.sent == []


def test_events_of_a_measurement_protocol_request_are_counted_from_its_json() -> None:
    assert event_count(MP_REQUEST) == 3
    assert event_count(HIT) == 1


def test_an_entry_written_before_kinds_existed_is_a_beacon() -> None:
    request, _ = _entry({b"q": b"v=2", b"b": b"en=x", b"ua": b"Mozilla/5.0", b"t": b"1.0"})
    assert request.kind == BEACON


async def test_the_kind_survives_the_redis_outbox(redis_url: str) -> None:
    client = make_redis(redis_url)
    spill = RedisSpill(client, stream_maxlen=100, metrics=Metrics())
    delivered: list[OutboundRequest] = []

    async def deliver(request: OutboundRequest) -> bool:
        delivered.append(request)
        return True

    assert await spill.put(MP_REQUEST, time.time())
    assert await spill.put(HIT, time.time())
    task = asyncio.create_task(spill.run(deliver))
    for _ in range(250):
        if len(delivered) == 2:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await spill.close()
    await client.aclose()
    assert {r.kind: r for r in delivered} == {MEASUREMENT_PROTOCOL: MP_REQUEST, BEACON: HIT}
