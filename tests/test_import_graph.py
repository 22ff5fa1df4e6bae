"""The import direction of ARCHITECTURE.md, read from the source (every import statement,
at module level or inside a function): cli → bandit → {features, merging, store};
features → merging; store imports nothing of ours; only cli and tests import zoo."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bandit", "merging", "features", "store", "zoo")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {"cli": ROOT / "cli.py"}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an import refers to (its longest known prefix), or None."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in MODULES:
            return candidate
    return None


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for n in names:
            target = _resolve(n)
            if target is not None and target != module:
                out.add(target)
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def _top(module: str) -> str:
    return module.split(".")[0]


def _cycles(nodes: set[str]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in nodes:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read():
    # a reader that finds nothing would make every other test here pass
    assert "bandit.service" in GRAPH["cli"]
    assert "store" in GRAPH["bandit.service"]
    assert "bandit.policies.ridge" in GRAPH["bandit.service.reward"]


def test_no_cycle_outside_merging():
    nodes = {m for m in MODULES if _top(m) != "merging"}
    assert _cycles(nodes) == []


def test_no_cycle_in_merging():
    assert _cycles({m for m in MODULES if _top(m) == "merging"}) == []


ALLOWED = {
    "cli": {"bandit", "merging", "features", "zoo"},
    "bandit": {"merging", "features", "store"},
    "features": {"merging"},
    "merging": set(),
    "store": set(),
    "zoo": {"bandit", "merging", "features"},
}


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_imports_point_one_way(room):
    wrong = sorted(f"{m} → {t}" for m in GRAPH if _top(m) == room for t in GRAPH[m]
                   if _top(t) != room and _top(t) not in ALLOWED[room])
    assert wrong == []


def test_cli_imports_no_store():
    assert not any(_top(t) == "store" for t in GRAPH["cli"])


def test_only_cli_and_tests_import_zoo():
    assert sorted(m for m in GRAPH if _top(m) not in ("zoo", "cli") and any(_top(t) == "zoo" for t in GRAPH[m])) == []


def test_the_fast_reward_path_imports_no_numpy():
    """`bandit reward` must start fast: the modules it loads import numpy nowhere."""
    import subprocess
    import sys

    code = ("import sys; import cli; from bandit.service import Service; import bandit.service.reward; "
            "print('numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_opens_and_writes_no_files_itself():
    """cli parses, calls the facade and renders: files are read and written by the library."""
    tree = ast.parse((ROOT / "cli.py").read_text(encoding="utf-8"))
    calls = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            calls.add(f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else "")
    assert calls & {"open", "replace", "rename", "write_text", "write_bytes", "unlink", "makedirs"} == set()
    assert "echo" in calls  # the walk does see the calls
