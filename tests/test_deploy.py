"""The deployment files stay true to the code: probes, ports, config and env names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from proxy.config import ENV_OVERRIDES, from_mapping
from proxy.server import init_app

DEPLOY = Path(__file__).parent.parent / "deploy"


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def kind(name: str) -> dict[str, Any]:
    return next(d for d in documents() if d["kind"] == name
                and d["metadata"]["name"] == "analytics-proxy")


def test_configmap_holds_a_valid_configuration_once_secrets_are_set() -> None:
    raw = yaml.safe_load(kind("ConfigMap")["data"]["proxy.yaml"])
    secret_env = kind("Secret")["stringData"]
    config = from_mapping(raw, env=secret_env)
    assert config.admin.token and config.state.redis_url
    assert not config.dry_run


def test_secret_keys_are_environment_overrides_the_proxy_reads() -> None:
    assert set(kind("Secret")["stringData"]) <= set(ENV_OVERRIDES)


def test_probes_point_at_routes_the_app_serves() -> None:
    container = kind("Deployment")["spec"]["template"]["spec"]["containers"][0]
    paths = {container["readinessProbe"]["httpGet"]["path"],
             container["livenessProbe"]["httpGet"]["path"]}
    config = from_mapping({"measurement_ids": ["G-TEST1234"]}, env={})
    routes = {r.resource.canonical for r in init_app(config).router.routes()
              if r.resource is not None}
    assert paths <= routes


def test_container_ports_match_the_configured_ones() -> None:
    raw = yaml.safe_load(kind("ConfigMap")["data"]["proxy.yaml"])
    container = kind("Deployment")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": raw["listen"]["port"], "admin": raw["admin"]["port"]}


def test_every_alert_uses_metrics_the_proxy_exposes() -> None:
    import re

    from proxy.metrics import Metrics

    exposed = {line.split()[2] for line in Metrics().exposition().decode().splitlines()
               if line.startswith("# TYPE ")}
    exposed |= {f"{name}_total" for name in exposed}  # counters are typed without _total
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = [r for group in rules["groups"] for r in group["rules"]]
    assert {"AnalyticsProxyOutboxNearCap", "AnalyticsProxyOutboxTrimming"} <= {
        a["alert"] for a in alerts}
    for alert in alerts:
        used = set(re.findall(r"analytics_proxy_[a-z_]+", alert["expr"]))
        assert used and used <= exposed, (alert["alert"], used - exposed)
