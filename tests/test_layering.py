"""Import direction (design §2): tasks is pure; storage and ray_cluster are generic; only flows meets them all."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INTERNAL = {"flows", "tasks", "storage", "ray_cluster", "datasets_cfg", "dashboards", "services", "quarry_cli"}
FORBIDDEN = {
    "tasks": {"prefect", "ray", "duckdb"} | (INTERNAL - {"tasks"}),
    "storage": INTERNAL - {"storage"},
    "ray_cluster": INTERNAL - {"ray_cluster"},
    "datasets_cfg": INTERNAL - {"datasets_cfg", "tasks"},
    "dashboards": INTERNAL - {"dashboards", "storage"},
    "services": INTERNAL - {"services", "tasks"},  # servers wrap engines around the pure layer, nothing else
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_what_it_may(layer):
    offenders = []
    for path in sorted((REPO / layer).rglob("*.py")):
        bad = _imports(path) & FORBIDDEN[layer]
        if bad:
            offenders.append(f"{path.relative_to(REPO)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)
