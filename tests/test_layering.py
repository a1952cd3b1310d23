"""Import direction (design §2): tasks is pure; storage is generic; ray_cluster (profiles, executor) knows storage but
no stage; only flows meets them all, and flows only composes; services run processes beside the pipeline."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INTERNAL = {"flows", "tasks", "storage", "ray_cluster", "datasets_cfg", "dashboards", "services", "quarry_cli"}
HTTP_SERVERS = {"http.server", "socketserver", "fastapi", "uvicorn", "starlette", "flask", "aiohttp.web", "tornado"}
FORBIDDEN = {
    "tasks": {"prefect", "ray", "duckdb"} | HTTP_SERVERS | (INTERNAL - {"tasks"}),
    "storage": INTERNAL - {"storage"},
    "ray_cluster": INTERNAL - {"ray_cluster", "storage"},
    "datasets_cfg": INTERNAL - {"datasets_cfg", "tasks"},
    "dashboards": INTERNAL - {"dashboards", "storage"},
    "services": INTERNAL - {"services", "storage", "ray_cluster", "flows", "datasets_cfg", "tasks"},
    # flows compose registry stages: no Arrow compute, SQL engine or array maths of their own
    "flows": {"duckdb", "numpy", "pyarrow", "pyarrow.compute", "pandas"},
}


def _imports(path: Path) -> set[str]:
    """Every imported module, as its top-level package and as its full dotted name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names.update({a.name.split(".")[0], a.name})
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.update({node.module.split(".")[0], node.module})
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_what_it_may(layer):
    offenders = []
    for path in sorted((REPO / layer).rglob("*.py")):
        bad = _imports(path) & FORBIDDEN[layer]
        if bad:
            offenders.append(f"{path.relative_to(REPO)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("layer", ["ray_cluster", "storage"])
def test_generic_layers_name_no_stage(layer):
    """The executor and storage run any stage: no string literal in them is the name of a registry stage."""
    from tasks import registry

    offenders = []
    for path in sorted((REPO / layer).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in registry.STAGES:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} names stage {node.value!r}")
    assert not offenders, "\n".join(offenders)


def test_flows_hold_no_hand_written_commit():
    """derive -> run -> commit is written once, in the executor: flows only name stages."""
    offenders = [
        f"{p.relative_to(REPO)}" for p in sorted((REPO / "flows").rglob("*.py"))
        if any(word in p.read_text() for word in ("commit(", "derive(", "write_table(", "write_shard", "run_remote("))
    ]
    assert not offenders, offenders


def test_no_private_imports_across_modules():
    """``from x import _private`` between our modules couples rooms through their internals."""
    offenders = []
    for layer in INTERNAL - {"quarry_cli"}:
        for path in sorted((REPO / layer).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in INTERNAL:
                    base = REPO.joinpath(*node.module.split("."))
                    private = [a.name for a in node.names if a.name.startswith("_")
                               and not (base / f"{a.name}.py").exists()]  # a private kernel module is fine
                    if private:
                        offenders.append(f"{path.relative_to(REPO)} imports {private} from {node.module}")
    assert not offenders, "\n".join(offenders)


def test_modules_stay_small_or_say_why():
    """No module over ~500 lines without a reason written at its top (a docstring line starting 'Size:')."""
    offenders = []
    for layer in INTERNAL - {"quarry_cli"}:
        for path in sorted((REPO / layer).rglob("*.py")):
            text = path.read_text()
            if text.count("\n") > 520 and "Size:" not in (ast.get_docstring(ast.parse(text)) or ""):
                offenders.append(f"{path.relative_to(REPO)}: {text.count(chr(10))} lines")
    assert not offenders, "\n".join(offenders)


def test_flows_are_short():
    # 1,000 until issues 28/34 added two composition-level rooms: plan.py (a dry run that walks the flows' own
    # composition, so it cannot drift from it) and leasing.py (a run's claim and lease on what it writes); ~130 and
    # ~50 lines. 1,100 until issue 32 added a flow (mixture.py, ~150 lines: sample mixtures, train/evaluate a proxy
    # per mixture, fit, validate) and issue 30 curated watched batches in order (curate.py/watch.py, ~85 lines).
    # The budget still fails a flow that grows its own engine code.
    total = sum(p.read_text().count("\n") for p in (REPO / "flows").rglob("*.py"))
    assert total < 1350, f"flows/ has {total} lines; it should only compose registry stages"


# tasks/ is one package per stage family, in pipeline order, over common/ (the verdict, text normalization, bundled
# assets, eval-set specs); registry.py (and warm.py) sit on top and may import any family.
FAMILIES = ("common", "ingest", "signals", "filter", "dedup", "select", "balance", "augment", "train", "evaluate", "mixture",
            "export")  # mixture (issue 32) fits evaluated proxies of trained mixtures: after train and evaluate


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _internal_edges(path: Path) -> set[str]:
    """Project modules this file imports (lazy imports included), resolved to modules that exist."""
    def exists(mod: str) -> bool:
        p = REPO.joinpath(*mod.split("."))
        return p.with_suffix(".py").exists() or (p / "__init__.py").exists()

    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            mods = [f"{base}.{a.name}" if exists(f"{base}.{a.name}") else base for a in node.names]
        else:
            continue
        out.update(m for m in mods if m.split(".")[0] in INTERNAL and exists(m))
    return out


def _graph() -> dict[str, set[str]]:
    graph = {}
    for layer in INTERNAL - {"quarry_cli"}:
        for path in sorted((REPO / layer).rglob("*.py")):
            graph[_module_name(path)] = _internal_edges(path) - {_module_name(path)}
    return graph


def test_task_families_import_only_down_the_pipeline():
    """A family imports common/ and the families before it, never a later one (and common imports no family)."""
    rank = {f: i for i, f in enumerate(FAMILIES)}
    assert {p.name for p in (REPO / "tasks").iterdir() if (p / "__init__.py").exists()} == set(FAMILIES)
    offenders = []
    for mod, deps in _graph().items():
        parts = mod.split(".")
        if parts[0] != "tasks" or len(parts) < 3:  # registry.py and warm.py are the tables on top
            continue
        for dep in deps:
            dp = dep.split(".")
            if dp[0] == "tasks" and len(dp) >= 2 and dp[1] in rank and rank[dp[1]] > rank[parts[1]]:
                offenders.append(f"{mod} ({parts[1]}) imports {dep} ({dp[1]}): later in the pipeline")
    assert not offenders, "\n".join(offenders)


def test_no_import_circle():
    """No module reaches itself through imports, lazy ones included (a circle means a concept sits in the wrong room)."""
    graph = _graph()
    circles, state = [], {}

    def visit(mod: str, stack: list[str]) -> None:
        state[mod] = "open"
        for dep in sorted(graph.get(mod, ())):
            if state.get(dep) == "open":
                circles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[mod] = "done"

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
    assert not circles, "\n".join(circles)
