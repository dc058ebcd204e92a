"""The folder list is the architecture (../shared/STYLE.md, "Where code lives"): every package
says what it holds, no module grows past ~600 lines, imports run one way (server → pipeline →
stages → state/config) with no cycle, and the README's "Layout" names every package."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROXY = ROOT / "proxy"
MAX_LINES = 600
# From the top down. A module may import from its own layer or any below it, never above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("cli", ("proxy.cli", "proxy.__main__")),
    ("server", ("proxy.server",)),
    # What the server serves besides the beacon path: the Measurement Protocol, the tag and
    # tracker, and the privacy lead's views (audit trail, explain, report, dashboard).
    ("services", ("proxy.mp", "proxy.tag", "proxy.observe.audit", "proxy.observe.explain",
                  "proxy.observe.report", "proxy.observe.dashboard")),
    ("pipeline", ("proxy.pipeline",)),
    ("stages", ("proxy.ingest", "proxy.consent", "proxy.sanitize", "proxy.location",
                "proxy.delivery", "proxy.observe.metrics")),
    ("state", ("proxy.state", "proxy.observe.logs")),
    ("config", ("proxy.config", "proxy.observe", "proxy")),
]
# The one way down that is not by layer: the configuration validates the options each
# consent source declares, and the region names, against the stages' own definitions (which
# import nothing of the configuration: no cycle, checked below).
CONFIG_READS = {("proxy.config", "proxy.consent.registry"),
                ("proxy.config", "proxy.location.regions")}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PROXY.rglob("*.py")}


def layer(module: str) -> int:
    best, index = "", len(LAYERS)
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, index = prefix, i
    assert best, f"{module} is in no layer"
    return index


def imports(path: Path, known: dict[str, Path], runtime: bool = False
            ) -> Iterator[tuple[str, int]]:
    """Every proxy module ``path`` imports (at any depth, lazily; for type checking too,
    unless ``runtime``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}
    for node in ast.walk(tree):
        if runtime and id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("proxy"):
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            if not base.startswith("proxy"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in known else base), node.lineno


def graph(runtime: bool = False) -> dict[str, set[str]]:
    known = modules()
    return {name: {target for target, _ in imports(path, known, runtime) if target != name}
            for name, path in known.items()}


def test_every_module_is_in_a_layer_and_imports_only_downwards() -> None:
    upward = []
    for source, targets in graph().items():
        for target in targets:
            if target == "proxy" or (source, target) in CONFIG_READS:
                continue
            if layer(target) < layer(source):
                upward.append(f"{source} ({LAYERS[layer(source)][0]}) imports {target} "
                              f"({LAYERS[layer(target)][0]})")
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycle() -> None:
    # At run time: a name imported only to annotate (TYPE_CHECKING) closes no cycle.
    edges = graph(runtime=True)
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if nxt not in edges:
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*trail[trail.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_over_600_lines(name: str) -> None:
    lines = modules()[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{name}: {lines} lines; split it along its concepts"


def packages() -> list[Path]:
    return sorted(p.parent for p in PROXY.rglob("__init__.py"))


@pytest.mark.parametrize("package", packages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_package_says_in_one_line_what_it_holds(package: Path) -> None:
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text(encoding="utf-8")))
    assert doc, f"{package}: no docstring"
    assert len(doc.strip().splitlines()) == 1, f"{package}: more than one line"


def test_the_readme_layout_names_every_package_and_top_level_module() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\s*(?:[│├└─ ]*)([\w./]+)\s", section, flags=re.M))
    wanted = {str(p.relative_to(ROOT)) + "/" for p in packages() if p != PROXY}
    wanted |= {f"proxy/{p.name}" for p in PROXY.glob("*.py") if p.name != "__init__.py"}
    missing = {w for w in wanted if w.removeprefix("proxy/") not in listed and w not in listed}
    assert not missing, f"README Layout does not list: {sorted(missing)}"


def test_tests_mirror_the_tree() -> None:
    # Each stage's tests sit in the folder of the same name.
    for package in packages():
        if package == PROXY:
            continue
        rel = package.relative_to(PROXY)
        if len(rel.parts) > 1:
            continue  # sub-packages (observe/report, ...) are tested in their parent's folder
        assert (ROOT / "tests" / rel).is_dir(), f"no tests/{rel}/ for proxy/{rel}/"
