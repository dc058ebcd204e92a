"""The container command, composed as Kubernetes and compose compose it from the image's
ENTRYPOINT/CMD and their own fields, started through the real console script: it parses,
serves, reaches readiness on the manifest's own probes and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.deploy_files import (
    DOCKERFILE,
    bind_mounts,
    compose,
    compose_command,
    compose_environment,
    console_script,
    image_env,
    image_exec,
    kind,
    kubernetes_command,
    pod_spec,
)
from tests.redis_server import free_port, redis_server_binary

ENTRYPOINT = image_exec(DOCKERFILE.read_text(), "ENTRYPOINT")
CMD = image_exec(DOCKERFILE.read_text(), "CMD")


# --- The composition rules, as the orchestrators document them ------------------------------

IMAGE_EP, IMAGE_CMD = ["ep"], ["cmd", "--flag"]


@pytest.mark.parametrize(("command", "args", "runs"), [
    (None, None, ["ep", "cmd", "--flag"]),  # the image's own
    (None, ["serve"], ["ep", "serve"]),  # args replace CMD, ENTRYPOINT stays
    (["other"], None, ["other"]),  # command replaces ENTRYPOINT and drops CMD
    (["other"], ["serve"], ["other", "serve"]),
])
def test_kubernetes_composition_rule(command: list[str] | None, args: list[str] | None,
                                     runs: list[str]) -> None:
    assert kubernetes_command(IMAGE_EP, IMAGE_CMD, command, args) == runs


@pytest.mark.parametrize(("service", "runs"), [
    ({}, ["ep", "cmd", "--flag"]),
    ({"command": ["serve"]}, ["ep", "serve"]),
    ({"command": "serve --config '/a b'"}, ["ep", "serve", "--config", "/a b"]),
    ({"entrypoint": ["other"]}, ["other"]),  # an entrypoint clears the image's CMD
    ({"entrypoint": "other -x", "command": ["serve"]}, ["other", "-x", "serve"]),
])
def test_compose_composition_rule(service: dict[str, Any], runs: list[str]) -> None:
    assert compose_command(IMAGE_EP, IMAGE_CMD, service) == runs


def test_image_entrypoint_is_the_program_and_cmd_its_default_arguments() -> None:
    """So that arguments given by an orchestrator replace the subcommand instead of being
    appended after it (the shipped Deployment used to run ``analytics-proxy serve --config
    ... serve --config ...``, which exits 2)."""
    assert ENTRYPOINT == ["analytics-proxy"]
    assert CMD[0] == "serve"


# --- Running the composed command ------------------------------------------------------------


@dataclass
class Container:
    """What a container would get, laid out on this machine: argv with its mounted paths
    pointing at files here, the environment, and where its ports went."""

    argv: list[str]
    env: dict[str, str]
    ports: dict[int, int]  # container port -> free loopback port
    workdir: Path  # an empty working directory (the image's is /)


def lay_out_config(source_text: str, into: Path) -> dict[int, int]:
    """Write the shipped proxy.yaml with its two ports moved to free ones (tests run side by
    side on one machine); every other key as shipped."""
    config = yaml.safe_load(source_text)
    ports = {config["listen"]["port"]: free_port(), config["admin"]["port"]: free_port()}
    config["listen"]["port"] = ports[config["listen"]["port"]]
    config["admin"]["port"] = ports[config["admin"]["port"]]
    into.parent.mkdir(parents=True, exist_ok=True)
    into.write_text(yaml.safe_dump(config))
    return ports


def process_env(container_env: dict[str, str], tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_PROXY_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return {
        **env,
        **image_env(DOCKERFILE.read_text()),
        **container_env,
        # The image's /tmp is a volume of its own (emptyDir, tmpfs): temporary files go there.
        "TMPDIR": str(tmp),
        # Nothing leaves this machine: the dry run instead of Google.
        "ANALYTICS_PROXY_UPSTREAM_URL": "stdout",
    }


def remap(argv: list[str], mounts: dict[str, Path]) -> list[str]:
    """Paths inside the container's mounts, pointed at what is mounted there."""
    out = []
    for arg in argv:
        within = [m for m in mounts if arg == m or arg.startswith(m.rstrip("/") + "/")]
        if within:
            inside = max(within, key=len)  # the innermost mount holds the path
            arg = str(mounts[inside]) + arg[len(inside.rstrip("/")):]
        out.append(arg)
    return out


def kubernetes_container(tmp_path: Path, redis_url: str) -> Container:
    spec = pod_spec("Deployment")
    container = spec["containers"][0]
    argv = kubernetes_command(ENTRYPOINT, CMD, container.get("command"), container.get("args"))
    mounts: dict[str, Path] = {}
    ports: dict[int, int] = {}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in container["volumeMounts"]:
        volume, where = volumes[mount["name"]], tmp_path / mount["name"]
        where.mkdir()
        if "configMap" in volume:  # each key a file
            data = kind("ConfigMap", volume["configMap"]["name"])["data"]
            for key, text in data.items():
                if key == "proxy.yaml":
                    ports = lay_out_config(text, where / key)
                else:
                    (where / key).write_text(text)
        mounts[mount["mountPath"]] = where
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(kind("Secret", source["secretRef"]["name"])["stringData"])
    env.update({e["name"]: e["value"] for e in container.get("env", [])})
    # The Secret names the cluster's Redis Service; here it is the tests' real Redis.
    assert env["ANALYTICS_PROXY_REDIS_URL"].startswith("redis://analytics-proxy-redis:")
    env["ANALYTICS_PROXY_REDIS_URL"] = redis_url
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    return Container(remap(argv, mounts), process_env(env, mounts["/tmp"]), ports, workdir)


def compose_container(tmp_path: Path, redis_url: str) -> Container:
    service = compose()["services"]["proxy"]
    argv = compose_command(ENTRYPOINT, CMD, service)
    mounts: dict[str, Path] = {}
    ports: dict[int, int] = {}
    for inside, outside in bind_mounts(service).items():
        mounts[inside] = tmp_path / "mounts" / outside.name
        ports = lay_out_config(outside.read_text(), mounts[inside])
    env = compose_environment(service, {"ANALYTICS_PROXY_ADMIN_TOKEN": "compose-token"})
    assert env["ANALYTICS_PROXY_REDIS_URL"].startswith("redis://redis:")  # the service name
    env["ANALYTICS_PROXY_REDIS_URL"] = redis_url
    tmpfs = tmp_path / "tmpfs"
    for path in [tmpfs, tmp_path / "workdir"]:
        path.mkdir()
    assert service["tmpfs"] == ["/tmp"]
    return Container(remap(argv, mounts), process_env(env, tmpfs), ports, tmp_path / "workdir")


def start(container: Container) -> subprocess.Popen[str]:
    program = console_script(container.argv[0])  # what `pip install .` put on the image's PATH
    return subprocess.Popen([program, *container.argv[1:]], cwd=container.workdir,
                            env=container.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def get(url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_for(url: str, proc: subprocess.Popen[str], status: int = 200, token: str | None = None,
             seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _out, err = proc.communicate()
            raise AssertionError(f"exited {proc.returncode} before {url} answered:\n{err}")
        try:
            if get(url, token) == status:
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer {status} in {seconds} s")


def stop(proc: subprocess.Popen[str], grace: float) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        raise AssertionError(f"still running {grace} s after SIGTERM:\n{err}") from None


def test_kubernetes_deployment_command_serves_until_sigterm(tmp_path: Path,
                                                            redis_url: str) -> None:
    """The Deployment's container, as the kubelet would run it from the image: the command
    parses, the workers start, the manifest's readiness and liveness probes pass (Redis from
    the Secret's variable answering), the admin port wants the Secret's token, and SIGTERM
    ends it within the termination grace period, having written nothing outside /tmp."""
    container = kubernetes_container(tmp_path, redis_url)
    assert container.argv[1:3] == ["serve", "--config"]
    spec = pod_spec("Deployment")
    manifest = spec["containers"][0]
    named = {p["name"]: p["containerPort"] for p in manifest["ports"]}
    proc = start(container)
    try:
        for probe in ("readinessProbe", "livenessProbe"):
            http = manifest[probe]["httpGet"]
            port = container.ports[named[http["port"]]]
            wait_for(f"http://127.0.0.1:{port}{http['path']}", proc)
        metrics = f"http://127.0.0.1:{container.ports[named['admin']]}/metrics"
        wait_for(metrics, proc, 200, token=container.env["ANALYTICS_PROXY_ADMIN_TOKEN"])
        assert get(metrics) == 401
    finally:
        _out, err = stop(proc, spec["terminationGracePeriodSeconds"])
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert list(container.workdir.iterdir()) == []  # the root filesystem stays untouched


def test_compose_service_command_serves_until_sigterm(tmp_path: Path, redis_url: str) -> None:
    """compose.yaml's proxy service, as compose would run it from the image built from
    deploy/Dockerfile: it serves, its own healthcheck passes, and it stops on SIGTERM within
    stop_grace_period."""
    container = compose_container(tmp_path, redis_url)
    service = compose()["services"]["proxy"]
    public = next(iter(container.ports.values()))
    proc = start(container)
    try:
        wait_for(f"http://127.0.0.1:{public}/readyz", proc)
        # The service's healthcheck command, run by the image's python against its port.
        check = service["healthcheck"]["test"]
        assert check[:2] == ["CMD", "python"]
        inner = [arg.replace(f":{k}/", f":{v}/") for arg in check[2:]
                 for k, v in list(container.ports.items())[:1]]
        run = subprocess.run([sys.executable, *inner], capture_output=True, text=True,
                             timeout=10)
        assert run.returncode == 0, run.stderr
    finally:
        _out, err = stop(proc, float(service["stop_grace_period"].rstrip("s")))
    assert proc.returncode == 0, err
    assert list(container.workdir.iterdir()) == []


# --- Redis as the manifests and compose.yaml run it ----------------------------------------


@pytest.mark.parametrize("where", ["kubernetes", "compose"])
def test_redis_options_keep_the_outbox_across_a_restart(where: str, tmp_path: Path) -> None:
    """redis-server with the shipped options (the volume's path moved here): they parse,
    every write is appended to the volume, and what was written survives a restart."""
    if where == "kubernetes":
        args = pod_spec("StatefulSet", "analytics-proxy-redis")["containers"][0]["args"]
    else:
        args = compose()["services"]["redis"]["command"][1:]
    volume = tmp_path / "data"
    volume.mkdir()
    args = [str(volume) if arg == "/data" else arg for arg in args]
    port = free_port()

    def serve() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([redis_server_binary(), *args, "--port", str(port),
                                 "--bind", "127.0.0.1"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        for _ in range(100):
            try:
                redis.Redis(port=port).ping()
                return proc
            except redis.ConnectionError:
                assert proc.poll() is None, proc.communicate()[0].decode()
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    proc = serve()
    try:
        client = redis.Redis(port=port)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.xadd("{analytics_proxy}:outbox", {"beacon": "v=2&tid=G-XXXXXXX"})
    finally:
        proc.terminate()  # SIGTERM, as a pod's or container's stop sends
        proc.wait(timeout=10)
    assert any(p.name.endswith(".aof") for p in volume.rglob("*")), list(volume.rglob("*"))
    proc = serve()
    try:
        assert redis.Redis(port=port).xlen("{analytics_proxy}:outbox") == 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)
