"""The README as written works: every command of its ``sh`` blocks, run in order as a new
user runs them, in a copy of the repository set up as ``make run``'s install step leaves it.

Commands run in bash from the copy's root, with an environment that has no virtualenv on
its PATH and no ``ANALYTICS_PROXY_*`` variable: what the README says to do (activate the
virtualenv) is what makes the tool found. ``make run`` is started as the README says and
serves the commands after it; it is stopped with Ctrl-C (SIGINT to its process group) at
the end. Its two ports are moved to free ones in the copy's ``config/proxy.yaml`` and in the
commands (tests run side by side on one machine): the only change made to what is written.
Commands that cannot run here are listed in ``EXEMPT`` with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.redis_server import free_port

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
COMMAND_TIMEOUT = 120  # seconds for any one command: the README shows quick ones
PORTS = (8080, 9090)  # the shipped config's public and admin ports

# Commands the test does not run, by how they start, with the reason.
EXEMPT = {
    "make test": "the suite this test belongs to (CI's .ci/run runs it): it would recurse",
    "docker ": "needs a Docker daemon; tests/test_container.py runs the command the image "
               "and compose.yaml compose through the CLI, tests/test_deploy.py validates them",
    'echo "ANALYTICS_PROXY_ADMIN_TOKEN=': "writes .env for docker compose (exempt above)",
    "kubectl ": "needs a Kubernetes cluster; tests/test_container.py runs the Deployment's "
                "composed command, tests/test_deploy.py validates the manifests",
    "make bench": "a benchmark: minutes of load on both cores; the README quotes its numbers",
    "apt-get ": "installs system packages",
}
# Commands that change the shell the README's later commands run in.
SHELL_STATE = (". ", "source ", "export ", "cd ")
SERVERS = {"make run"}  # started, left serving, stopped at the end


@dataclass
class Command:
    written: str  # as written, continuation lines joined: what runs
    after: str  # the README from the end of its block on: what it says about the output

    @property
    def text(self) -> str:
        """Without its trailing comment: what identifies it."""
        return re.sub(r"\s+#(\s.*)?$", "", self.written)


def readme_commands(text: str) -> list[Command]:
    commands = []
    for block in re.finditer(r"^```(?:sh|bash|shell|console)\n(.*?)^```\n", text,
                             re.MULTILINE | re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block.group(1))
        for line in joined.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(Command(line, text[block.end():]))
    return commands


def exemption(command: str) -> str | None:
    return next((why for start, why in EXEMPT.items() if command.startswith(start)), None)


def next_block(after: str, kind: str) -> str:
    """The first ``kind`` block after a command, before the next shell block."""
    found = re.search(rf"^```{kind}\n(.*?)^```\n", after, re.MULTILINE | re.DOTALL)
    assert found is not None, f"no {kind} block after the command"
    shell = re.search(r"^```(?:sh|bash|shell|console)\n", after, re.MULTILINE)
    assert shell is None or shell.start() > found.start(), f"no {kind} block before the next"
    return found.group(1)


# --- The copy of the repository -----------------------------------------------------------


@dataclass
class Clone:
    root: Path
    ports: dict[int, int]  # shipped port -> free port

    def adapt(self, command: str) -> str:
        for shipped, port in self.ports.items():
            command = re.sub(rf":{shipped}\b", f":{port}", command)
        return command


def clone_repository(into: Path) -> Clone:
    """The repository's files (tracked and new, not ignored), and a ``.venv`` as ``make run``
    leaves it: the real virtualenv's files, with the console script newer than
    pyproject.toml so that make sees the install step done and does not redo it."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, capture_output=True, check=True)
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)  # mtimes kept, for make
    venv, bin_dir = ROOT / ".venv", into / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for entry in venv.iterdir():
        if entry.name != "bin":
            (into / ".venv" / entry.name).symlink_to(entry)
    for entry in (venv / "bin").iterdir():
        (bin_dir / entry.name).symlink_to(entry)
    (bin_dir / "analytics-proxy").unlink()
    shutil.copy(venv / "bin" / "analytics-proxy", bin_dir / "analytics-proxy")
    config = into / "config" / "proxy.yaml"
    ports = {shipped: free_port() for shipped in PORTS}
    text = config.read_text()
    for shipped, port in ports.items():
        text, count = re.subn(rf"\bport: {shipped}\b", f"port: {port}", text)
        assert count == 1, f"config/proxy.yaml no longer ships port {shipped}"
    config.write_text(text)
    return Clone(into, ports)


def user_env() -> dict[str, str]:
    """A shell as a new user has it: no virtualenv on PATH, no proxy variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANALYTICS_PROXY_", "VIRTUAL_ENV", "PYTEST_", "COV_"))}
    path = [d for d in env.get("PATH", "").split(os.pathsep)
            if d and not (Path(d) / "analytics-proxy").exists()]
    env["PATH"] = os.pathsep.join(path)
    return env


# --- What each command must show ---------------------------------------------------------


@dataclass
class Ran:
    command: Command
    code: int
    out: str
    err: str
    clone: Clone


def shown_explain_output(ran: Ran) -> None:
    """The text block after the example, exactly, but for the pseudonym: a keyed hash under
    a salt the run makes up, so it differs from one run to the next."""
    shown = next_block(ran.command.after, "text")
    pseudonym = r"cid\s+replaced\s+pseudonym\s+\S+ → (\S+)"
    written, got = re.search(pseudonym, shown), re.search(pseudonym, ran.out)
    assert written and got, ran.out
    assert ran.out == shown.replace(written.group(1), got.group(1))


def record_lines(ran: Ran) -> None:
    """Records as the README shows them (whatever the server has recorded so far)."""
    for line in ran.out.splitlines():
        if not line.startswith(" "):
            assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\dZ  \S+  (FORWARD|DROP)  ", line), line


def report_markdown(ran: Ran) -> None:
    assert next_block(ran.command.after, "markdown") in ran.out


def report_html(ran: Ran) -> None:
    page = (ran.clone.root / "transfer-report.html").read_text()
    assert page.lstrip().lower().startswith("<!doctype html>") and "</html>" in page


def report_json(ran: Ran) -> None:
    report = json.loads(ran.out)
    assert len(report["cnil_conditions"]) == 7
    assert "40,000" in json.dumps(report) or "40000" in json.dumps(report)


def dry_run_answer(ran: Ran) -> None:
    assert ran.out.startswith("HTTP/1.1 204"), ran.out


CHECKS: dict[str, Callable[[Ran], None]] = {
    "curl -i -X POST 'http://127.0.0.1:8080/g/collect": dry_run_answer,
    "analytics-proxy explain ": shown_explain_output,
    "analytics-proxy audit tail": record_lines,
    "analytics-proxy report --config config/proxy.yaml": report_markdown,
    "analytics-proxy report --format html > transfer-report.html": report_html,
    "analytics-proxy report --format json --daily-visitors 40000": report_json,
}


def check_dry_run_lines(stdout: str) -> None:
    """What the README says the `make run` terminal prints for the curl example."""
    line = json.loads(next(x for x in stdout.splitlines() if x.startswith("{")))
    query = parse_qs(urlsplit(line["url"]).query)
    assert line["dry_run"] is True
    assert query["cid"] != ["123.456"]  # replaced
    assert query["dl"] == ["https://www.example.com/"]  # query and e-mail gone
    assert query["npa"] == ["1"]
    assert query["_uip"] == ["127.0.0.0"]  # curl's address, cut to its /24


# --- The run ---------------------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[str]

    def stop(self) -> tuple[str, str]:
        os.killpg(self.proc.pid, signal.SIGINT)  # Ctrl-C in its terminal
        try:
            return self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            _out, err = self.proc.communicate()
            raise AssertionError(f"still serving 30 s after Ctrl-C:\n{err}") from None


def start_server(command: str, clone: Clone, env: dict[str, str]) -> Server:
    proc = subprocess.Popen(["bash", "-c", command], cwd=clone.root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    ready = f"http://127.0.0.1:{clone.ports[8080]}/readyz"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"{command!r} exited {proc.returncode}:\n{out}\n{err}")
        try:
            with urllib.request.urlopen(ready, timeout=1) as resp:
                if resp.status == 200:
                    return Server(proc)
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    Server(proc).stop()
    raise AssertionError(f"{command!r} did not become ready")


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        if server.proc.poll() is None:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.communicate()


def test_readme_lists_the_commands_this_test_knows() -> None:
    """Each command is run and checked, started as a server, changes the shell, or is
    exempt with a reason; none is left unaccounted for."""
    for command in readme_commands(README.read_text(encoding="utf-8")):
        text = command.text
        assert (exemption(text) or text in SERVERS or text.startswith(SHELL_STATE)
                or any(text.startswith(start) for start in CHECKS)
                or text.startswith("analytics-proxy ")), (
            f"{text!r}: add a check to CHECKS, or a reason to EXEMPT")


def test_every_readme_command_works_as_shown(tmp_path: Path, servers: list[Server]) -> None:
    clone = clone_repository(tmp_path / "analytics-proxy")
    env = user_env()
    shell_state: list[str] = []
    ran: list[str] = []
    for command in readme_commands(README.read_text(encoding="utf-8")):
        if exemption(command.text):
            continue
        text = clone.adapt(command.written)
        if command.text in SERVERS:
            servers.append(start_server(text, clone, env))
            ran.append(command.text)
            continue
        script = "\n".join([*shell_state, text])
        run = subprocess.run(["bash", "-c", script], cwd=clone.root, env=env, text=True,
                             capture_output=True, timeout=COMMAND_TIMEOUT)
        result = Ran(command, run.returncode, run.stdout, run.stderr, clone)
        assert run.returncode == 0, f"{command.text!r} exited {run.returncode}:\n{run.stderr}"
        assert "Traceback" not in run.stderr, run.stderr
        check = next((c for start, c in CHECKS.items() if command.text.startswith(start)), None)
        if check is not None:
            check(result)
        if command.text.startswith(SHELL_STATE):
            shell_state.append(text)
        ran.append(command.text)
    stopped = [server.stop() for server in servers]
    for _out, err in stopped:
        # Ctrl-C ends make by SIGINT, as in a terminal; the proxy under it shut down cleanly.
        assert "Traceback" not in err and '"message": "shutting down"' in err, err
    # The terminal running `make run` printed the request the curl example would send.
    check_dry_run_lines(stopped[0][0])
    # A new user's path through the README: serve, try it, activate, explain, report.
    assert ran[0] == "make run" and ". .venv/bin/activate" in ran
    assert any(c.startswith("analytics-proxy explain") for c in ran)
