"""The deployment files stay true to the code (probes, ports, config and env names), pass
their validators, and hold what they promise (security context, autoscaling, network policy,
persistent Redis). The container command they compose is run in tests/test_container.py."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import ENV_OVERRIDES, from_mapping
from proxy.server.public import init_app
from tests.deploy_files import (
    COMPOSE,
    DEPLOY,
    DOCKERFILE,
    bind_mounts,
    compose,
    compose_environment,
    image_env,
    image_user,
    kind,
    named_volumes,
    pod_spec,
    validator,
)


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


def test_secret_holds_every_secret_the_proxy_reads() -> None:
    assert set(kind("Secret")["stringData"]) == {"ANALYTICS_PROXY_ADMIN_TOKEN",
                                                 "ANALYTICS_PROXY_REDIS_URL",
                                                 "ANALYTICS_PROXY_TAG_PUBLIC_URL"}
    container = pod_spec("Deployment")["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "analytics-proxy"}}]


# --- Validators: the files pass the tools that read them ---------------------------------------


def test_manifests_pass_kubernetes_validate_strictly() -> None:
    """Against the API's own schemas; --strict rejects any field the API does not know."""
    manifests = sorted(str(p) for p in (DEPLOY / "kubernetes").glob("*.yaml"))
    run = subprocess.run([validator("kubernetes-validate"), "--strict", "--quiet", *manifests],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_dockerfile_passes_hadolint() -> None:
    run = subprocess.run([validator("hadolint"), "--no-color", str(DOCKERFILE)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and not run.stdout.strip(), run.stdout + run.stderr


def test_compose_file_matches_the_compose_specification() -> None:
    """The Compose Specification's JSON schema, as vendored by check-jsonschema."""
    run = subprocess.run([validator("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                          str(COMPOSE)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("tool", ["kubernetes-validate", "hadolint", "check-jsonschema"])
def test_validators_reject_a_broken_file(tool: str, tmp_path: Path) -> None:
    """The validators really look: a misspelt field fails each of them."""
    if tool == "hadolint":
        broken = tmp_path / "Dockerfile"
        broken.write_text(DOCKERFILE.read_text().replace(
            'ENTRYPOINT ["analytics-proxy"]', "ENTRYPOINT analytics-proxy"))
        command = [validator(tool), str(broken)]
    elif tool == "kubernetes-validate":
        broken = tmp_path / "proxy.yaml"
        broken.write_text((DEPLOY / "kubernetes" / "analytics-proxy.yaml").read_text().replace(
            "readOnlyRootFilesystem", "readOnlyRootFileSystem"))
        command = [validator(tool), "--strict", "--quiet", str(broken)]
    else:
        broken = tmp_path / "compose.yaml"
        broken.write_text(COMPOSE.read_text().replace("cap_drop:", "cap_dorp:"))
        command = [validator(tool), "--builtin-schema", "vendor.compose-spec", str(broken)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0, run.stdout + run.stderr


# --- Kubernetes: what the manifests promise ---------------------------------------------------


def test_proxy_pods_run_unprivileged_on_a_read_only_root() -> None:
    spec = pod_spec("Deployment")
    container = spec["containers"][0]
    assert spec["securityContext"]["runAsNonRoot"] is True
    # The uid the image declares, so a cluster that checks runAsNonRoot can verify it.
    assert str(spec["securityContext"]["runAsUser"]) == image_user(
        DOCKERFILE.read_text()).split(":")[0]
    assert container["securityContext"] == {
        "runAsNonRoot": True, "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert spec["automountServiceAccountToken"] is False
    # Service links would add ANALYTICS_PROXY_REDIS_PORT=tcp://... to the environment the
    # proxy reads its overrides from.
    assert spec["enableServiceLinks"] is False


def test_the_only_writable_place_is_an_empty_dir_at_tmp() -> None:
    """The proxy writes only temporary files (tempfile's directory: /tmp in the image, as
    the Dockerfile sets no TMPDIR); everything else is mounted read-only."""
    from proxy.location import geo_index

    spec = pod_spec("Deployment")
    volumes = {v["name"]: v for v in spec["volumes"]}
    writable = [m for m in spec["containers"][0]["volumeMounts"] if not m.get("readOnly")]
    assert [(m["mountPath"], "emptyDir" in volumes[m["name"]]) for m in writable] == [
        ("/tmp", True)]
    assert "TMPDIR" not in image_env(DOCKERFILE.read_text())
    assert geo_index.default_cache_dir().parent == Path(tempfile.gettempdir())


def test_probes_and_ports_use_the_named_container_ports() -> None:
    container = pod_spec("Deployment")["containers"][0]
    names = {p["name"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {"http", "admin"} == names


def test_autoscaler_scales_the_deployment_on_cpu_above_the_disruption_budget() -> None:
    hpa, pdb = kind("HorizontalPodAutoscaler")["spec"], kind("PodDisruptionBudget")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": "analytics-proxy"}
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    assert 0 < hpa["metrics"][0]["resource"]["target"]["averageUtilization"] <= 100
    # Utilisation is relative to the request: without one the autoscaler cannot work.
    assert pod_spec("Deployment")["containers"][0]["resources"]["requests"]["cpu"]
    # The autoscaler owns the count; a fixed one would be reset by every kubectl apply.
    assert "replicas" not in kind("Deployment")["spec"]
    labels = kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["minAvailable"] < hpa["minReplicas"] <= hpa["maxReplicas"]


def test_network_policy_keeps_the_admin_port_internal() -> None:
    policy = kind("NetworkPolicy")["spec"]
    labels = kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    config = yaml.safe_load(kind("ConfigMap")["data"]["proxy.yaml"])
    public, admin = config["listen"]["port"], config["admin"]["port"]
    by_port = {p["port"]: rule for rule in policy["ingress"] for p in rule["ports"]}
    assert set(by_port) == {public, admin}  # nothing else is reachable
    assert "from" not in by_port[public]  # the ingress controller, wherever it runs
    peers = by_port[admin]["from"]
    # Pods of this namespace, and the monitoring namespace: never an ipBlock, never everyone.
    assert {"podSelector": {}} in peers
    assert all(set(peer) <= {"podSelector", "namespaceSelector"} for peer in peers)
    assert all(peer.get("namespaceSelector") != {} for peer in peers)
    assert any(peer.get("namespaceSelector", {}).get("matchLabels", {}).get(
        "kubernetes.io/metadata.name") == "monitoring" for peer in peers)


def test_redis_is_a_stateful_set_appending_to_its_volume() -> None:
    redis = kind("StatefulSet", "analytics-proxy-redis")["spec"]
    container = redis["template"]["spec"]["containers"][0]
    options = redis_options(container["args"])
    assert options["appendonly"] == "yes" and options["maxmemory-policy"] == "noeviction"
    claims = {c["metadata"]["name"]: c for c in redis["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[options["dir"]] in claims  # the AOF lands on the persistent volume
    service = kind("Service", "analytics-proxy-redis")["spec"]
    assert redis["serviceName"] == "analytics-proxy-redis" and service["clusterIP"] == "None"
    # The Secret's URL names this Service.
    assert "//analytics-proxy-redis:6379" in kind("Secret")["stringData"][
        "ANALYTICS_PROXY_REDIS_URL"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    policy = kind("NetworkPolicy", "analytics-proxy-redis")["spec"]
    assert policy["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {
        "app": "analytics-proxy"}}}]


def redis_options(args: list[str]) -> dict[str, str]:
    """``["--dir", "/data", "--save", "", ...]`` -> ``{"dir": "/data", "save": "", ...}``."""
    args = [a for a in args if a != "redis-server"]
    assert all(a.startswith("--") for a in args[::2]), args
    return {name[2:]: value for name, value in zip(args[::2], args[1::2], strict=True)}


# --- compose.yaml: one host ---------------------------------------------------------------------


def test_compose_builds_the_image_from_the_dockerfile() -> None:
    proxy = compose()["services"]["proxy"]
    build = proxy["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    image = pod_spec("Deployment")["containers"][0]["image"]
    assert proxy["image"] == image  # one name and version for the image everywhere


def test_compose_runs_the_proxy_unprivileged_and_read_only() -> None:
    proxy = compose()["services"]["proxy"]
    assert proxy["read_only"] is True and proxy["tmpfs"] == ["/tmp"]
    assert proxy["user"] == image_user(DOCKERFILE.read_text())
    assert proxy["cap_drop"] == ["ALL"] and "no-new-privileges:true" in proxy["security_opt"]
    for path in bind_mounts(proxy).values():
        assert path.is_file(), path


def test_compose_publishes_the_public_port_on_loopback_only_and_never_the_admin_port() -> None:
    proxy = compose()["services"]["proxy"]
    config = yaml.safe_load(bind_mounts(proxy)["/etc/analytics-proxy/proxy.yaml"].read_text())
    public, admin = config["listen"]["port"], config["admin"]["port"]
    assert proxy["ports"] == [f"127.0.0.1:{public}:{public}"]
    assert proxy["expose"] == [str(admin)]


def test_compose_redis_appends_to_a_named_volume() -> None:
    spec = compose()
    redis = spec["services"]["redis"]
    options = redis_options(redis["command"])
    assert options["appendonly"] == "yes" and options["maxmemory-policy"] == "noeviction"
    volume = named_volumes(redis)[options["dir"]]
    assert volume in spec["volumes"]
    assert spec["services"]["proxy"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert spec["services"]["proxy"]["environment"]["ANALYTICS_PROXY_REDIS_URL"] == (
        "redis://redis:6379/0")


def test_compose_prometheus_is_optional_and_scrapes_with_the_token() -> None:
    spec = compose()
    prometheus = spec["services"]["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    assert all("profiles" not in spec["services"][name] for name in ("proxy", "redis"))
    assert spec["secrets"]["admin_token"] == {"environment": "ANALYTICS_PROXY_ADMIN_TOKEN"}
    config = yaml.safe_load(bind_mounts(prometheus)["/etc/prometheus/prometheus.yml"].read_text())
    job = config["scrape_configs"][0]
    assert job["authorization"]["credentials_file"] == "/run/secrets/admin_token"
    admin = yaml.safe_load(bind_mounts(spec["services"]["proxy"])[
        "/etc/analytics-proxy/proxy.yaml"].read_text())["admin"]["port"]
    assert job["static_configs"] == [{"targets": [f"proxy:{admin}"]}]


def test_compose_prometheus_config_passes_promtool(promtool: str, tmp_path: Path) -> None:
    """``promtool check config`` with compose's mounts in place: the scrape config, the
    proxy's alert rules it loads and the token file it reads."""
    prometheus = compose()["services"]["prometheus"]
    mounts = {**bind_mounts(prometheus), "/run/secrets/admin_token": tmp_path / "admin_token"}
    (tmp_path / "admin_token").write_text("a-token\n")
    text = mounts["/etc/prometheus/prometheus.yml"].read_text()
    for inside, outside in mounts.items():
        text = text.replace(inside, str(outside))
    config = tmp_path / "prometheus.yml"
    config.write_text(text)
    run = subprocess.run([promtool, "check", "config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "alerts.yml" in run.stdout + run.stderr  # the rule file was found and checked


def test_compose_proxy_config_is_valid_once_compose_sets_the_environment() -> None:
    proxy = compose()["services"]["proxy"]
    env = compose_environment(proxy, {"ANALYTICS_PROXY_ADMIN_TOKEN": "a-token"})
    raw = yaml.safe_load(bind_mounts(proxy)["/etc/analytics-proxy/proxy.yaml"].read_text())
    config = from_mapping(raw, env=env)
    assert config.admin.token == "a-token" and config.state.redis_url
    assert not config.dry_run


def test_compose_refuses_to_start_without_an_admin_token() -> None:
    with pytest.raises(ValueError, match="ANALYTICS_PROXY_ADMIN_TOKEN"):
        compose_environment(compose()["services"]["proxy"], {})


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

    from proxy.observe.metrics import Metrics

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
