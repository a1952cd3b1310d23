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
    total = sum(p.read_text().count("\n") for p in (REPO / "flows").rglob("*.py"))
    assert total < 1000, f"flows/ has {total} lines; it should only compose registry stages"
