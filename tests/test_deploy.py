"""The deployment files stay true to the code: probes, ports, config and env names."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
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


# --- Prometheus: alerts and their unit tests ------------------------------------------------

PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana" / "analytics-proxy.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
# Words of PromQL that look like names but are not series: keywords, and what follows them.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan"}


def exposed_metrics() -> set[str]:
    """Every series name the proxy can expose, from its own exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    from proxy.metrics import Metrics

    text = Metrics().exposition().decode()
    return {family.name + suffix for family in text_string_to_metric_families(text)
            for suffix in SUFFIXES[family.type]}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression (Grafana's variables allowed) reads."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana's variables
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+\w+", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", text):
        follows = text[match.end():].lstrip()[:1]
        before = text[:match.start()]
        if follows == "(" or match.group() in KEYWORDS or re.search(r"[\d.]$", before):
            continue  # a function or aggregation, a keyword, or part of a number (1e3)
        names.add(match.group())
    return names


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (reason) (rate(a_total{x="b c"}[5m])) / ignoring (reason) group_left sum(b)',
     {"a_total", "b"}),
    ("histogram_quantile(0.99, sum by (le) (rate(h_bucket{job=~\"$job\"}[$__rate_interval])))",
     {"h_bucket"}),
    ("x - y > 600 and on (job, instance) z offset 1h > 0", {"x", "y", "z"}),
    ("level:m_total:ratio_rate1d > 1e3 * 2", {"level:m_total:ratio_rate1d"}),
    ("max(up) == bool 1 unless absent(nothing)", {"up", "nothing"}),
])
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_every_alert_uses_metrics_the_proxy_exposes() -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    exposed = exposed_metrics()
    alerts = [rule for rule in rules() if "alert" in rule]
    assert {"AnalyticsProxyForwardingFailing", "AnalyticsProxyOutboxGrowing",
            "AnalyticsProxyDropRateAnomaly", "AnalyticsProxySaltNotRotating",
            "AnalyticsProxyGeoDatabaseStale"} <= {a["alert"] for a in alerts}
    for rule in rules():
        used = metric_names(rule["expr"])
        assert used and used <= exposed | recorded, (rule.get("alert"), used - exposed)


def test_every_alert_has_a_unit_test_where_it_fires() -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    firing = {case["alertname"] for group in tests for case in group["alert_rule_test"]
              if case.get("exp_alerts")}
    assert firing == {rule["alert"] for rule in rules() if "alert" in rule}


def test_rules_pass_promtool_check(promtool: str) -> None:
    run = subprocess.run([promtool, "check", "rules", str(PROMETHEUS / "alerts.yml")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_alerts_fire_as_their_unit_tests_say(promtool: str) -> None:
    run = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


# --- Grafana: the dashboard -------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return dict(json.loads(GRAFANA.read_text()))


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def expressions() -> list[str]:
    exprs = [t["expr"] for p in panels() for t in p["targets"]]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def test_dashboard_has_the_shape_grafana_imports() -> None:
    board = dashboard()
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["title"] and board["uid"] and isinstance(board["panels"], list)
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert set(grid) == {"h", "w", "x", "y"}, panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels():
        # Every query goes to the datasource the importer chose, never a fixed one.
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_dashboard_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[(x, y)] = panel["title"]


def test_every_dashboard_expression_uses_metrics_the_proxy_exposes() -> None:
    exposed = exposed_metrics() | {"ALERTS"}  # ALERTS: Prometheus's own series of alerts
    for expr in expressions():
        label_values = re.fullmatch(r"label_values\((\w+)(\{.*\})?,\s*\w+\)", expr)
        used = {label_values.group(1)} if label_values else metric_names(expr)
        assert used and used <= exposed, (expr, used - exposed)


def test_dashboard_shows_what_operations_watch() -> None:
    used = set().union(*(metric_names(e) for e in expressions()))
    assert {
        "analytics_proxy_beacons_received_total",
        "analytics_proxy_beacons_forwarded_total",
        "analytics_proxy_beacons_dropped_total",
        "analytics_proxy_consent_decisions_total",
        "analytics_proxy_consent_regime_decisions_total",
        "analytics_proxy_location_level_total",
        "analytics_proxy_parameters_changed_total",
        "analytics_proxy_upstream_request_duration_seconds_bucket",
        "analytics_proxy_upstream_requests_total",
        "analytics_proxy_queue_depth",
        "analytics_proxy_outbox_depth",
        "analytics_proxy_salt_age_seconds",
        "analytics_proxy_geo_database_age_seconds",
        "ALERTS",
    } <= used


def test_dashboard_expressions_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool parses each query, as a recording rule, once Grafana's variables are set."""
    values = {"$__rate_interval": "5m", "$__range": "6h", "$job": "proxy", "$instance": ".*"}
    records = []
    for number, expr in enumerate(e for e in expressions() if not e.startswith("label_values")):
        for name, value in values.items():
            expr = expr.replace(name, value)
        records.append({"record": f"dashboard:query{number}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    run = subprocess.run([promtool, "check", "rules", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
