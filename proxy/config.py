"""Configuration: YAML file plus environment overrides, validated once into frozen objects.

An unknown key, a wrong type or an impossible combination raises ``ConfigError`` naming the
key; ``serve`` turns that into a one-line message and exit status 2.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec
import phonenumbers
import yaml

from proxy.consent.registry import SourceOptions, default_sources
from proxy.location.regions import expand_regions

DEFAULT_CONFIG_PATH = Path("config/proxy.yaml")
EU_ENDPOINT = "https://region1.google-analytics.com/g/collect"
MP_ENDPOINT = "https://region1.google-analytics.com/mp/collect"  # Measurement Protocol, EU
MP_MAX_BODY = 130_000  # GA's limit for one Measurement Protocol post, in bytes
DRY_RUN = "stdout"

# Secrets and deployment values that may come from the environment instead of the file.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "ANALYTICS_PROXY_ADMIN_TOKEN": ("admin", "token"),
    "ANALYTICS_PROXY_REDIS_URL": ("state", "redis_url"),
    "ANALYTICS_PROXY_UPSTREAM_URL": ("upstream", "url"),
    "ANALYTICS_PROXY_GEO_DATABASE": ("geo", "database"),
    "ANALYTICS_PROXY_TAG_PUBLIC_URL": ("tag", "public_url"),
    "ANALYTICS_PROXY_MP_UPSTREAM_URL": ("measurement_protocol", "upstream_url"),
}
TAG_ORIGIN = "https://www.googletagmanager.com"
# Read timeouts of the listening ports (seconds): a browser sends a beacon's headers and body
# in one or two packets, a slow mobile link in well under a second.
HEADER_TIMEOUT = 10.0  # from a request's first byte to the end of its headers
BODY_TIMEOUT = 10.0  # from the end of the headers to the end of the body
KEEPALIVE_TIMEOUT = 75.0  # an idle kept-alive connection (aiohttp's own default: 3630)

_MEASUREMENT_ID = re.compile(r"^G-[A-Z0-9]{4,20}$")
_DURATION = re.compile(r"^(\d+)\s*([smhd])$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PARAM_NAME = re.compile(r"^[A-Za-z0-9_]{1,40}$")
_OVERRIDE_NAME = re.compile(r"^[A-Za-z0-9_]{1,8}(\.[A-Za-z0-9_]{1,40})?$")


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key."""


class _Strict(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class Listen(_Strict, frozen=True):
    host: str = "0.0.0.0"
    port: int = 8080
    # Seconds. A request's headers must arrive within header_timeout of its first byte, its
    # body within body_timeout of its headers (else 408, counted as timeout, connection
    # closed); an idle kept-alive connection is closed after keepalive_timeout.
    header_timeout: float = HEADER_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    keepalive_timeout: float = KEEPALIVE_TIMEOUT


class Admin(_Strict, frozen=True):
    host: str = "127.0.0.1"
    port: int = 9090
    token: str | None = None  # ANALYTICS_PROXY_ADMIN_TOKEN


class Upstream(_Strict, frozen=True):
    url: str = EU_ENDPOINT  # "stdout": dry run, one JSON line per forwarded request
    # lean: the proxy's own HTTP/1.1 keep-alive sender (proxy/delivery/transport.py), several times
    # cheaper per request; aiohttp: aiohttp's ClientSession, the conservative choice.
    client: Literal["lean", "aiohttp"] = "lean"
    timeout: float = 5.0  # seconds for one request to Google, connect included
    connect_timeout: float = 2.0
    max_connections: int = 64  # keep-alive pool size, and concurrent sends
    queue_size: int = 10_000  # accepted beacons waiting to be forwarded
    retries: int = 4  # after the first attempt, for network errors, 5xx and 429
    # A request sent and never answered (timeout, connection closed after sending) may have
    # reached Google: by default it is not sent again (counted as unconfirmed), since GA4
    # counts a repeat as new events. true: prefer a possible duplicate to a possible loss.
    resend_unconfirmed: bool = False
    backoff_initial: float = 0.2  # seconds; doubles each retry, with full jitter
    backoff_max: float = 10.0
    # SIGTERM: /readyz turns 503 at once, but the proxy keeps serving for shutdown_grace so
    # load balancers notice; then it stops accepting and has shutdown_deadline to deliver
    # what it holds before the rest goes to the outbox (state.*).
    shutdown_grace: float = 2.0
    shutdown_deadline: float = 10.0


class Pseudonym(_Strict, frozen=True):
    bits: int = 32
    rotation: str = "24h"
    # Derive a pseudonym from (truncated address, generalised UA, tid) when a beacon has no
    # cid, as cookieless products do; otherwise such a beacon is dropped.
    cookieless: bool = False

    @property
    def rotation_seconds(self) -> int:
        return parse_duration(self.rotation)


class Location(_Strict, frozen=True):
    mode: Literal["omit", "truncated", "country", "mesh"] = "truncated"
    ipv4_prefix: int = 24  # truncated: the network part kept
    ipv6_prefix: int = 48
    # mesh: a cell (city, then region, then country) is used only once at least k distinct
    # pseudonymous visitors were seen in it within the rolling window.
    k: int = 10
    window: str = "24h"

    @property
    def window_seconds(self) -> int:
        return parse_duration(self.window)


class Privacy(_Strict, frozen=True):
    profile: Literal["strict", "balanced"] = "strict"
    pseudonym: Pseudonym = Pseudonym()
    location: Location = Location()
    event_params: list[str] = msgspec.field(default_factory=list)  # ep./epn. names allowed
    user_properties: list[str] = msgspec.field(default_factory=list)  # up./upn., balanced only
    url_query_allowlist: list[str] = msgspec.field(default_factory=list)
    # Per-site overrides of single parameters: name -> keep | drop | scrub.
    overrides: dict[str, Literal["keep", "drop", "scrub"]] = msgspec.field(default_factory=dict)
    pii_detectors: list[str] | None = None  # None: the scrubber's default set
    # Countries whose national phone formats are recognised (ISO 3166); None: the countries
    # of consent.regimes, filled in when the configuration is loaded.
    phone_regions: list[str] | None = None
    forward_debug: bool = False  # forward _dbg (GA DebugView) hits


class Regimes(_Strict, frozen=True):
    opt_in: list[str] = msgspec.field(default_factory=lambda: ["EEA", "GB", "CH"])
    opt_out: list[str] = msgspec.field(default_factory=lambda: ["US"])


class Defaults(_Strict, frozen=True):
    opt_in: Literal["drop", "forward"] = "drop"
    opt_out: Literal["drop", "forward"] = "forward"
    other: Literal["drop", "forward"] = "drop"
    unknown: Literal["drop", "forward"] = "drop"


class Consent(_Strict, frozen=True):
    gpc: Literal["deny", "ignore", "ignore_for_explicit_grant"] = "deny"
    dnt: Literal["deny", "ignore"] = "deny"
    regimes: Regimes = Regimes()
    defaults: Defaults = Defaults()
    sources: list[SourceOptions] = msgspec.field(default_factory=default_sources)


class Geo(_Strict, frozen=True):
    database: str | None = None
    # country/mesh: where the index of representative addresses, built once per database
    # version, is cached (None: a directory under the system's temporary directory).
    index_cache: str | None = None


class InternalTraffic(_Strict, frozen=True):
    # Office/VPN networks whose beacons are marked tt=<traffic_type> before the address is
    # discarded, so GA's internal-traffic filter works without the address.
    networks: list[str] = msgspec.field(default_factory=list)
    traffic_type: str = "internal"


class Audit(_Strict, frozen=True):
    # Fraction of forwarded beacons recorded in the audit trail; every drop is recorded.
    sample: float = 0.01
    # Records kept (a capped Redis stream with state.redis_url, else an in-memory ring).
    max_records: int = 10_000


class State(_Strict, frozen=True):
    redis_url: str | None = None
    # The outbox holds sanitised beacons Google could not take in time (a Redis stream with
    # redis_url, else memory). Its cap is exported as a metric to alert on, before trimming.
    outbox_maxlen: int = 100_000
    # GA dates a hit by when it arrives: a beacon delivered hours late lands in the wrong
    # hour or day of the reports, so older entries are discarded (and counted) instead.
    outbox_max_age: str = "4h"
    # Seconds an entry may sit unacknowledged with one replica before another takes it
    # over; longer than upstream.timeout so a send in progress is not duplicated.
    claim_idle: float = 30.0
    # Beacons held in memory while Redis is unreachable (or the outbox without Redis).
    memory_outbox_size: int = 10_000
    # true (needs redis_url): the 204 is sent only once the beacon is in the Redis outbox
    # (written in group commits), so a replica killed outright loses nothing it answered.
    # While Redis cannot take it, the beacon is refused with 503. false: held in memory
    # first (faster; a SIGKILL loses what memory held).
    durable_ack: bool = False

    @property
    def outbox_max_age_seconds(self) -> int:
        return parse_duration(self.outbox_max_age)


class RateLimit(_Strict, frozen=True):
    # Beacons per client network (IPv4 /24, IPv6 /48) per window, shared across replicas.
    # A /24 can be an office or a mobile carrier's NAT: keep it generous. 0 disables.
    per_network: int = 1200
    window: str = "1m"

    @property
    def window_seconds(self) -> int:
        return parse_duration(self.window)


class Tag(_Strict, frozen=True):
    # GET /gtag/js?id=<measurement id>: Google's tag fetched by the proxy, with every Google
    # host in it rewritten to public_url, so the visitor's browser contacts the site alone.
    enabled: bool = True
    origin: str = TAG_ORIGIN  # where the proxy fetches tags (tests: a loopback server)
    # The proxy's public origin as browsers reach it (https://stats.example.com). Unset: the
    # tag is written for this machine and served to loopback requests only (trying it out).
    public_url: str | None = None
    ttl: str = "15m"  # served as fresh for this long after a fetch (and Cache-Control max-age)
    max_stale: str = "7d"  # then served while refreshed, or while Google is unreachable
    # GET /t.js?id=<measurement id>: the proxy's own few-KB tracker (no Google code at all).
    tracker: bool = True

    @property
    def ttl_seconds(self) -> int:
        return parse_duration(self.ttl)

    @property
    def max_stale_seconds(self) -> int:
        return parse_duration(self.max_stale)


class MeasurementProtocol(_Strict, frozen=True):
    # POST /mp/collect from a site's back end (proxy/mp/). Inert until a measurement id has
    # its proxy token and Google's api_secret in the environment (never in this file):
    # ANALYTICS_PROXY_MP_TOKEN_<ID> and ANALYTICS_PROXY_MP_API_SECRET_<ID>, "-" as "_".
    enabled: bool = True
    upstream_url: str = MP_ENDPOINT  # with upstream.url "stdout", a dry run as well
    max_body: int = MP_MAX_BODY


class Bots(_Strict, frozen=True):
    # Headless Chromium ("HeadlessChrome" in its User-Agent) is a bot and its beacons are
    # dropped (reason bot). true: forwarded as Chrome, for a site's own end-to-end tests.
    allow_headless: bool = False


class Log(_Strict, frozen=True):
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(_Strict, frozen=True):
    listen: Listen = Listen()
    admin: Admin = Admin()
    measurement_ids: list[str] = msgspec.field(default_factory=list)
    allowed_origins: list[str] = msgspec.field(default_factory=list)
    trusted_proxies: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1/32"])
    # The header the trusted proxies append the client to; the other one is never read.
    forwarded_header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for"
    upstream: Upstream = Upstream()
    privacy: Privacy = Privacy()
    consent: Consent = Consent()
    geo: Geo = Geo()
    internal_traffic: InternalTraffic = InternalTraffic()
    state: State = State()
    rate_limit: RateLimit = RateLimit()
    audit: Audit = Audit()
    tag: Tag = Tag()
    measurement_protocol: MeasurementProtocol = MeasurementProtocol()
    bots: Bots = Bots()
    log: Log = Log()

    @property
    def dry_run(self) -> bool:
        return self.upstream.url == DRY_RUN


def parse_duration(text: str) -> int:
    """``"24h"`` -> 86400. Raises ValueError on anything else."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"not a duration like 90s, 30m, 24h or 7d: {text!r}")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


def load(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment, validate. ``path=None``: embedded defaults."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        raw = loaded or {}
    return from_mapping(raw, os.environ if env is None else env)


def from_mapping(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Validate a configuration mapping (as parsed from YAML), applying env overrides."""
    data = _with_env(dict(raw), env or {})
    try:
        config = msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(_name_key(str(exc))) from None
    validate(config)
    return _with_phone_regions(config)


def _with_phone_regions(config: Config) -> Config:
    # Phone numbers are read in the national formats of the countries whose consent regimes
    # are configured, unless the site names its own.
    if config.privacy.phone_regions is not None:
        return config
    regimes = config.consent.regimes
    codes = expand_regions([*regimes.opt_in, *regimes.opt_out])
    regions = sorted({code.partition("-")[0] for code in codes} & phonenumbers.SUPPORTED_REGIONS)
    privacy = msgspec.structs.replace(config.privacy, phone_regions=regions)
    return msgspec.structs.replace(config, privacy=privacy)


def _with_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    for var, (section, key) in ENV_OVERRIDES.items():
        value = env.get(var)
        if value:
            block = data.get(section)
            block = dict(block) if isinstance(block, dict) else {}
            block[key] = value
            data[section] = block
    return data


def _name_key(message: str) -> str:
    # msgspec says "... - at `$.listen.port`"; lead with the key so the operator sees it first.
    text, sep, where = message.rpartition(" - at `")
    if not sep:
        return message
    key = where.rstrip("`").removeprefix("$").lstrip(".") or "(top level)"
    return f"{key}: {text}"


def validate(config: Config) -> None:
    """Checks msgspec's types cannot express: formats, ranges, combinations."""
    if not config.measurement_ids:
        raise ConfigError("measurement_ids: list at least one GA4 measurement ID (G-…)")
    for mid in config.measurement_ids:
        if not _MEASUREMENT_ID.match(mid):
            raise ConfigError(f"measurement_ids: {mid!r} is not a GA4 measurement ID (G-…)")
    for origin in config.allowed_origins:
        if not re.match(r"^https?://[^/\s]+$", origin):
            raise ConfigError(f"allowed_origins: {origin!r} must be scheme://host[:port]")
    for net in config.trusted_proxies:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"trusted_proxies: {net!r} is not an address or network") from None
    for section, port in (("listen", config.listen.port), ("admin", config.admin.port)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"{section}.port: {port} is not a TCP port")
    listen = config.listen
    for key, value, high in (
        ("header_timeout", listen.header_timeout, 300),
        ("body_timeout", listen.body_timeout, 300),
        ("keepalive_timeout", listen.keepalive_timeout, 3600),
    ):
        if not 0 < value <= high:
            raise ConfigError(f"listen.{key}: seconds, more than 0 and at most {high}")
    up = config.upstream
    if up.url != DRY_RUN and not re.match(r"^https?://[^/\s]+/\S*$", up.url):
        raise ConfigError(f"upstream.url: must be an http(s) URL or {DRY_RUN!r}")
    for key, value in (
        ("timeout", up.timeout),
        ("connect_timeout", up.connect_timeout),
        ("backoff_initial", up.backoff_initial),
        ("backoff_max", up.backoff_max),
    ):
        if value <= 0:
            raise ConfigError(f"upstream.{key}: must be positive")
    for key, count in (("max_connections", up.max_connections), ("queue_size", up.queue_size)):
        if count < 1:
            raise ConfigError(f"upstream.{key}: must be at least 1")
    if up.retries < 0:
        raise ConfigError("upstream.retries: must not be negative")
    if up.shutdown_grace < 0:
        raise ConfigError("upstream.shutdown_grace: must not be negative")
    if up.shutdown_deadline <= 0:
        raise ConfigError("upstream.shutdown_deadline: must be positive")
    state = config.state
    for key, count in (
        ("outbox_maxlen", state.outbox_maxlen),
        ("memory_outbox_size", state.memory_outbox_size),
    ):
        if count < 1:
            raise ConfigError(f"state.{key}: must be at least 1")
    _check_duration("state.outbox_max_age", state.outbox_max_age, 1, 3 * 86400, "1s and 3d")
    if state.durable_ack and not state.redis_url:
        raise ConfigError("state.durable_ack: needs state.redis_url (the outbox it writes to)")
    if state.claim_idle <= up.timeout:
        raise ConfigError("state.claim_idle: must be longer than upstream.timeout")
    pseudo = config.privacy.pseudonym
    if not 8 <= pseudo.bits <= 64:
        raise ConfigError("privacy.pseudonym.bits: must be between 8 and 64")
    _check_duration("privacy.pseudonym.rotation", pseudo.rotation, 3600, 7 * 86400, "1h and 7d")
    loc = config.privacy.location
    if not 8 <= loc.ipv4_prefix <= 24:
        raise ConfigError("privacy.location.ipv4_prefix: must be between 8 and 24")
    if not 16 <= loc.ipv6_prefix <= 48:
        raise ConfigError("privacy.location.ipv6_prefix: must be between 16 and 48")
    if loc.mode in ("country", "mesh") and not config.geo.database:
        raise ConfigError(f"privacy.location.mode: {loc.mode!r} needs geo.database")
    if not 2 <= loc.k <= 100_000:
        raise ConfigError("privacy.location.k: must be between 2 and 100000")
    _check_duration("privacy.location.window", loc.window, 3600, 30 * 86400, "1h and 30d")
    internal = config.internal_traffic
    for net in internal.networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(
                f"internal_traffic.networks: {net!r} is not an address or network"
            ) from None
    if not re.match(r"^[A-Za-z0-9_-]{1,40}$", internal.traffic_type):
        raise ConfigError("internal_traffic.traffic_type: letters, digits, _ and - only")
    if not 0.0 <= config.audit.sample <= 1.0:
        raise ConfigError("audit.sample: must be between 0 and 1")
    if config.audit.max_records < 1:
        raise ConfigError("audit.max_records: must be at least 1")
    for key, names in (
        ("event_params", config.privacy.event_params),
        ("user_properties", config.privacy.user_properties),
        ("url_query_allowlist", config.privacy.url_query_allowlist),
    ):
        for name in names:
            if not _PARAM_NAME.match(name):
                raise ConfigError(f"privacy.{key}: {name!r} is not a parameter name")
    if config.rate_limit.per_network < 0:
        raise ConfigError("rate_limit.per_network: must not be negative (0 disables)")
    _check_duration("rate_limit.window", config.rate_limit.window, 1, 3600, "1s and 1h")
    for name in config.privacy.overrides:
        # Names reach Google unencoded (the policy table's names are plain by construction).
        if not _OVERRIDE_NAME.match(name):
            raise ConfigError(f"privacy.overrides: {name!r} is not a parameter name")
    for region in config.privacy.phone_regions or ():
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ConfigError(
                f"privacy.phone_regions: {region!r} is not a country code libphonenumber knows"
            )
    regimes = config.consent.regimes
    try:
        opt_in, opt_out = expand_regions(regimes.opt_in), expand_regions(regimes.opt_out)
    except ValueError as exc:
        raise ConfigError(f"consent.regimes: {exc}") from None
    both = sorted(opt_in & opt_out)
    if both:
        raise ConfigError(f"consent.regimes: {', '.join(both)} in both opt_in and opt_out")
    if not config.consent.sources:
        raise ConfigError(
            "consent.sources: at least one source, or no beacon is ever forwarded "
            "outside opt-out regions"
        )
    tag = config.tag
    if not re.match(r"^https?://[^/\s?#]+/?$", tag.origin):
        raise ConfigError(f"tag.origin: {tag.origin!r} must be scheme://host[:port]")
    if tag.public_url is not None and not re.match(r"^https?://[^/\s?#@]+/?$", tag.public_url):
        raise ConfigError(f"tag.public_url: {tag.public_url!r} must be scheme://host[:port]")
    _check_duration("tag.ttl", tag.ttl, 60, 86400, "1m and 1d")
    _check_duration("tag.max_stale", tag.max_stale, 0, 30 * 86400, "0s and 30d")
    mp = config.measurement_protocol
    if not re.match(r"^https?://[^/\s?#@]+/\S*$", mp.upstream_url):
        raise ConfigError("measurement_protocol.upstream_url: must be an http(s) URL")
    if not 1 <= mp.max_body <= MP_MAX_BODY:
        raise ConfigError(f"measurement_protocol.max_body: between 1 and {MP_MAX_BODY} bytes")
    if config.admin.token is not None and not config.admin.token.strip():
        # An empty token would leave the admin port open wherever it listens.
        raise ConfigError("admin.token: must not be empty (unset it on a loopback address)")
    if config.admin.token is None and not _is_loopback(config.admin.host):
        raise ConfigError(
            "admin.host: a non-loopback admin address needs a token (ANALYTICS_PROXY_ADMIN_TOKEN)"
        )


def _check_duration(key: str, text: str, low: int, high: int, bounds: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if not low <= seconds <= high:
        raise ConfigError(f"{key}: must be between {bounds}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
