from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.config import (
    DEFAULT_CONFIG_PATH,
    EU_ENDPOINT,
    Bots,
    ConfigError,
    Listen,
    from_mapping,
    load,
)

ROOT = Path(__file__).parent.parent
BASE: dict[str, Any] = {"measurement_ids": ["G-TEST1234"]}


def test_shipped_config_file_is_valid_and_a_dry_run() -> None:
    config = load(ROOT / DEFAULT_CONFIG_PATH, env={})
    assert config.dry_run
    assert config.privacy.profile == "strict"
    assert type(config.consent.sources[0]).__struct_config__.tag == "consent_mode"


def test_read_timeouts_default_to_ten_seconds_and_headless_browsers_are_bots() -> None:
    config = from_mapping(BASE)
    listen = config.listen
    assert (listen.header_timeout, listen.body_timeout, listen.keepalive_timeout) == (
        10.0, 10.0, 75.0)
    assert not config.bots.allow_headless
    shipped = load(ROOT / DEFAULT_CONFIG_PATH, env={})  # says the defaults, as it claims
    assert (shipped.listen, shipped.bots) == (Listen(), Bots())


def test_built_in_upstream_is_googles_eu_endpoint() -> None:
    assert from_mapping(BASE).upstream.url == EU_ENDPOINT
    mp = from_mapping(BASE).measurement_protocol
    assert mp.upstream_url == "https://region1.google-analytics.com/mp/collect"
    assert mp.max_body == 130_000  # GA's own limit for one post
    env = {"ANALYTICS_PROXY_MP_UPSTREAM_URL": "http://127.0.0.1:1/mp/collect"}
    assert from_mapping(BASE, env).measurement_protocol.upstream_url == env[
        "ANALYTICS_PROXY_MP_UPSTREAM_URL"]


def test_environment_overrides_secrets_and_deployment_values() -> None:
    env = {
        "ANALYTICS_PROXY_ADMIN_TOKEN": "s3cret",
        "ANALYTICS_PROXY_REDIS_URL": "redis://r:6379",
        "ANALYTICS_PROXY_UPSTREAM_URL": "http://127.0.0.1:1/g/collect",
    }
    config = from_mapping({**BASE, "admin": {"port": 9999}}, env)
    assert config.admin.token == "s3cret"
    assert config.admin.port == 9999  # the rest of the section is kept
    assert config.state.redis_url == "redis://r:6379"
    assert config.upstream.url == "http://127.0.0.1:1/g/collect"


def test_source_options_override_defaults() -> None:
    config = from_mapping({**BASE, "consent": {"sources": [{"type": "bridge", "cookie": "ok"}]}})
    assert config.consent.sources[0].cookie == "ok"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"listn": {}}, "listn"),
        ({"listen": {"port": "eighty"}}, "listen.port"),
        ({"listen": {"port": 70000}}, "listen.port"),
        ({"listen": {"header_timeout": 0}}, "listen.header_timeout"),
        ({"listen": {"body_timeout": -1}}, "listen.body_timeout"),
        ({"listen": {"body_timeout": 301}}, "listen.body_timeout"),
        ({"listen": {"keepalive_timeout": "long"}}, "listen.keepalive_timeout"),
        ({"bots": {"allow_headless": "yes"}}, "bots.allow_headless"),
        ({"measurement_ids": []}, "measurement_ids"),
        ({"measurement_ids": ["UA-1234-1"]}, "measurement_ids"),
        ({"allowed_origins": ["www.example.com"]}, "allowed_origins"),
        ({"trusted_proxies": ["not-a-net"]}, "trusted_proxies"),
        ({"forwarded_header": "x-real-ip"}, "forwarded_header"),
        ({"upstream": {"url": "ftp://x/y"}}, "upstream.url"),
        ({"upstream": {"timeout": 0}}, "upstream.timeout"),
        ({"upstream": {"queue_size": 0}}, "upstream.queue_size"),
        ({"privacy": {"profile": "lax"}}, "privacy.profile"),
        ({"privacy": {"pseudonym": {"bits": 128}}}, "privacy.pseudonym.bits"),
        ({"privacy": {"pseudonym": {"rotation": "daily"}}}, "privacy.pseudonym.rotation"),
        ({"privacy": {"pseudonym": {"rotation": "10m"}}}, "privacy.pseudonym.rotation"),
        ({"privacy": {"location": {"mode": "mesh"}}}, "privacy.location.mode"),
        ({"privacy": {"location": {"mode": "city"}}}, "privacy.location.mode"),
        ({"privacy": {"event_params": ["bad name"]}}, "privacy.event_params"),
        ({"privacy": {"overrides": {"dt": "maybe"}}}, "privacy.overrides"),
        ({"consent": {"gpc": "sometimes"}}, "consent.gpc"),
        ({"consent": {"regimes": {"opt_in": ["Europe"]}}}, "consent.regimes"),
        ({"consent": {"regimes": {"opt_in": ["US"], "opt_out": ["US"]}}}, "consent.regimes"),
        ({"consent": {"sources": []}}, "consent.sources"),
        ({"consent": {"sources": [{"type": "osano"}]}}, "consent.sources[0].type"),
        ({"consent": {"sources": [{"type": "bridge", "cokie": "x"}]}}, "consent.sources[0]"),
        ({"admin": {"host": "0.0.0.0"}}, "admin.host"),
        ({"measurement_protocol": {"upstream_url": "stdout"}}, "measurement_protocol.upstream_url"),
        ({"measurement_protocol": {"max_body": 200_000}}, "measurement_protocol.max_body"),
        ({"measurement_protocol": {"api_secret": "x"}}, "api_secret"),  # environment only
    ],
)
def test_bad_configuration_names_the_key(patch: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping({**BASE, **patch})
    assert key in str(info.value)


def test_unreadable_file_and_bad_yaml_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(bad, env={})
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="mapping"):
        load(scalar, env={})
