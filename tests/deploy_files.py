"""The deploy files as the tools that run them read them: the Dockerfile's final stage, the
Kubernetes manifests, compose.yaml; and the container command each orchestrator composes."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"


# --- Dockerfile ---------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction, continuation lines joined."""
    found: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments and blank lines may sit inside a continued instruction too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        word, _, rest = (pending + line).partition(" ")
        found.append((word.upper(), rest.strip()))
        pending = ""
    return found


def final_stage(text: str) -> list[tuple[str, str]]:
    instructions = dockerfile_instructions(text)
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from + 1:]


def image_exec(text: str, instruction: str) -> list[str]:
    """The final stage's ENTRYPOINT or CMD. Exec form only: a shell form would run under
    ``/bin/sh -c``, which ignores the arguments an orchestrator appends."""
    values = [rest for word, rest in final_stage(text) if word == instruction]
    assert values, f"the final stage sets no {instruction}"
    value = json.loads(values[-1])
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), instruction
    return value


def image_env(text: str) -> dict[str, str]:
    """``ENV`` of the final stage (the ``KEY=value`` form)."""
    env: dict[str, str] = {}
    for word, rest in final_stage(text):
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def image_user(text: str) -> str:
    return [rest for word, rest in final_stage(text) if word == "USER"][-1]


# --- Composing the command: how each orchestrator combines its fields with the image's ------


def kubernetes_command(entrypoint: list[str], cmd: list[str], command: list[str] | None,
                       args: list[str] | None) -> list[str]:
    """Kubernetes' rule: ``command`` replaces ENTRYPOINT (and drops CMD), ``args`` replaces
    CMD (kubernetes.io, "Define a Command and Arguments for a Container")."""
    if command:
        return [*command, *(args or [])]
    return [*entrypoint, *(args if args else cmd)]


def compose_command(entrypoint: list[str], cmd: list[str], service: Mapping[str, Any]
                    ) -> list[str]:
    """Compose's rule: ``entrypoint`` replaces ENTRYPOINT and clears CMD, ``command``
    replaces CMD; a string is split as a shell would (compose-spec, services)."""

    def as_list(value: str | list[str] | None) -> list[str]:
        return shlex.split(value) if isinstance(value, str) else list(value or [])

    if service.get("entrypoint") is not None:
        return [*as_list(service["entrypoint"]), *as_list(service.get("command"))]
    return [*entrypoint, *(as_list(service["command"]) if "command" in service else cmd)]


# --- Kubernetes manifests -----------------------------------------------------------------


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def kind(name: str, of: str = "analytics-proxy") -> dict[str, Any]:
    return next(d for d in documents() if d["kind"] == name and d["metadata"]["name"] == of)


def pod_spec(workload: str, of: str = "analytics-proxy") -> dict[str, Any]:
    return dict(kind(workload, of)["spec"]["template"]["spec"])


# --- compose.yaml ---------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?error}``, ``${VAR?error}``, ``$$``. A required variable that is missing raises."""

    def one(match: re.Match[str]) -> str:
        if match.group(1):
            return "$"
        name = match.group(2) or match.group(5)
        op, arg = match.group(3), match.group(4) or ""
        value = env.get(name)
        missing = not value if op and op.startswith(":") else value is None
        if op in (":-", "-"):
            return arg if missing else str(value)
        if op in (":?", "?") and missing:
            raise ValueError(f"required variable {name} is missing: {arg}")
        return value or ""

    return _VARIABLE.sub(one, value)


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def compose_environment(service: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, env.get(item, ""))
                   for item in raw)
    return {str(k): interpolate(str(v), env) for k, v in raw.items()}


def bind_mounts(service: Mapping[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (relative to compose.yaml)."""
    mounts: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts[volume["target"]] = (COMPOSE.parent / volume["source"]).resolve()
            continue
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (COMPOSE.parent / source).resolve()
    return mounts


def named_volumes(service: Mapping[str, Any]) -> dict[str, str]:
    """Container path -> volume name of a service's named volumes (short syntax)."""
    found: dict[str, str] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
            if not source.startswith((".", "/")):
                found[target] = source
    return found


# --- Validators from the test extra -----------------------------------------------------------


def validator(name: str) -> str:
    """A command the test extra installs next to the interpreter. In CI its absence is a
    failure, never a skip."""
    local = Path(sys.executable).parent / name
    path = str(local) if local.exists() else shutil.which(name)
    if path is None:
        message = f"{name} is not installed: `make test` installs it (pyproject.toml, test extra)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def console_script(name: str) -> str:
    """The console script ``pip install`` made for the project (pyproject's [project.scripts])."""
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert name in scripts, f"{name!r} is not a console script of the project"
    local = Path(sys.executable).parent / name
    path = str(local) if local.exists() else shutil.which(name)
    assert path, f"the console script {name} is not installed (pip install -e .)"
    return path
