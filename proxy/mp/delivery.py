"""Measurement Protocol requests share the outbox and its retries with beacons, and leave by
their own endpoint: ``RoutedSender`` sends each request by its ``kind``. Google's
``api_secret`` is added here, at send time: it is never in the outbox, the audit trail or a
dry run's output."""

from __future__ import annotations

import dataclasses
import logging
import os
from urllib.parse import parse_qs, quote

import msgspec

from proxy.config import Config
from proxy.delivery.forward import HttpSender, Sender, StdoutSender
from proxy.delivery.outbound import BEACON, MEASUREMENT_PROTOCOL, OutboundRequest
from proxy.mp.credentials import Credentials, load_credentials

log = logging.getLogger(__name__)

REFUSED = 403  # a final answer: counted as rejected (lost), never retried


class MeasurementProtocolSender:
    """POST to ``measurement_protocol.upstream_url`` with the id's secret added."""

    def __init__(self, config: Config, credentials: Credentials,
                 transport: Sender | None = None) -> None:
        url = config.measurement_protocol.upstream_url
        self._dry_run = config.dry_run
        self._credentials = credentials
        if transport is not None:
            self._transport = transport
        elif config.dry_run:
            self._transport = StdoutSender(url)
        else:
            self._transport = HttpSender(msgspec.structs.replace(config.upstream, url=url))

    async def send(self, request: OutboundRequest) -> int:
        tid = parse_qs(request.query).get("measurement_id", [""])[0]
        secret = self._credentials.secret(tid)
        if self._dry_run:
            return await self._transport.send(request)  # printed without the secret
        if secret is None:
            # An entry another replica accepted, and this one has no secret for its id.
            log.warning("no api_secret for a measurement protocol entry's id",
                        extra={"reason": "rejected"})
            return REFUSED
        query = f"{request.query}&api_secret={quote(secret, safe='')}"
        return await self._transport.send(dataclasses.replace(request, query=query))

    async def close(self) -> None:
        await self._transport.close()


class RoutedSender:
    """Beacons to the configured sender, Measurement Protocol JSON to its own endpoint;
    anything else is refused, never sent to either."""

    def __init__(self, beacons: Sender, mp: Sender) -> None:
        self._beacons = beacons
        self._mp = mp

    async def send(self, request: OutboundRequest) -> int:
        if request.kind == BEACON:
            return await self._beacons.send(request)
        if request.kind == MEASUREMENT_PROTOCOL:
            return await self._mp.send(request)
        return REFUSED

    async def close(self) -> None:
        try:
            await self._beacons.close()
        finally:
            await self._mp.close()


def route(config: Config, beacons: Sender, credentials: Credentials | None = None) -> Sender:
    """Wrap the upstream sender. Always: the shared outbox may hold another replica's
    Measurement Protocol entries, which must never reach ``/g/collect``."""
    if credentials is None:
        credentials = load_credentials(os.environ, config.measurement_ids)
    return RoutedSender(beacons, MeasurementProtocolSender(config, credentials))
