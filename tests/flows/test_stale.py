"""Versions follow the code: a stage's identity covers every project module its function can run (kernels behind it
included) and the packages it declares; `quarry datasets --stale` lists what an upgrade would recompute."""

import importlib
import importlib.metadata
import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from ray_cluster.executor import code_of
from storage import code_identity, datasets
from tasks import registry

REPO = Path(__file__).resolve().parents[2]
QS = registry.STAGES["quality_signals"]


def _identity(stage, root):
    """The identity code_of computes, over a copy of the code at ``root`` (the copy may be edited)."""
    extra = [Path(root) / m.relative_to(REPO) if isinstance(m, Path) else getattr(m, "__name__", m) for m in stage.code]
    return code_identity.code_identity(stage.fn.__module__, extra_modules=extra, packages=stage.packages, root=root)


@pytest.fixture
def tree(tmp_path):
    """A copy of tasks/ to edit: the real tree stays untouched."""
    shutil.copytree(REPO / "tasks", tmp_path / "tasks", ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    return tmp_path


def test_identity_over_a_copy_equals_the_stage_identity(tree):
    assert _identity(QS, tree).digest == code_of(QS).digest


def test_editing_a_kernel_module_changes_quality_signals_version(tree):
    before = _identity(QS, tree)
    kernels = tree / "tasks" / "signals" / "_rpv2_kernels.py"
    kernels.write_text(kernels.read_text() + "\n\ndef _a_fix():\n    return 1\n")
    after = _identity(QS, tree)
    assert after.digest != before.digest
    assert after.diff(before.to_json()) == ["module tasks.signals._rpv2_kernels changed"]
    src = datasets.DatasetRef("/r", "d", "ingest", "0" * 12)
    assert datasets.derive(src, "quality_signals", before, None) != datasets.derive(src, "quality_signals", after, None)


def test_editing_only_comments_or_docstrings_keeps_the_version(tree):
    before = _identity(QS, tree)
    kernels = tree / "tasks" / "signals" / "_rpv2_kernels.py"
    text = kernels.read_text()
    first_def = text.index("\ndef ")
    name_end = text.index(":\n", first_def) + 2
    kernels.write_text("# a comment\n" + text[:name_end] + '    """A new docstring."""\n' + text[name_end:]
                       + "\n# trailing comment\n")
    assert kernels.read_text() != text
    assert _identity(QS, tree).digest == before.digest


@pytest.mark.parametrize("stage, data", [("quality_filter", "tasks/filter/rules/gopher.yaml"),
                                         ("quality_signals", "tasks/signals/resources/ldnoobw_en.txt"),
                                         ("augment", "tasks/augment/templates/tpt_paper_v1.txt")])
def test_editing_a_data_file_the_stage_reads_changes_its_version(tree, stage, data):
    """A recipe names a rule set, a template or a word list; the file's bytes are part of the code."""
    s = registry.STAGES[stage]
    assert _identity(s, tree).digest == code_of(s).digest and data in code_of(s).files
    before = _identity(s, tree)
    (tree / data).write_text((tree / data).read_text() + "\n")
    after = _identity(s, tree)
    assert after.digest != before.digest and after.diff(before.to_json()) == [f"file {data} changed"]


def test_bumping_a_declared_package_changes_the_version(monkeypatch):
    stage = registry.STAGES["datatrove_signals"]
    assert "datatrove" in stage.packages
    before = code_of(stage)
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda n: "999.0" if n == "datatrove" else real(n))
    after = code_of(stage)
    assert after.digest != before.digest
    assert after.diff(before.to_json()) == [f"package datatrove {before.packages['datatrove']} -> 999.0"]


def _project_modules_in_globals(module) -> set[str]:
    """Project modules whose function, class or module object ``module``'s globals hold (``from x import f``)."""
    names = set()
    for v in vars(module).values():
        if inspect.ismodule(v) and v.__name__.startswith(module.__name__ + "."):
            continue  # a package's submodule, bound on it by the import system when something imports it
        name = v.__name__ if inspect.ismodule(v) else getattr(v, "__module__", None)
        if isinstance(name, str) and name.split(".")[0] in ("tasks", "storage"):
            names.add(name)
    return names


def test_every_project_module_a_stage_imports_is_covered():
    """The closure is read from source; here the imported objects say what each module of it really uses."""
    missing = {}
    for stage in registry.STAGES.values():
        covered = set(code_of(stage).modules)
        for name in covered:
            lost = _project_modules_in_globals(importlib.import_module(name)) - covered
            if lost:
                missing[f"{stage.name}: {name}"] = sorted(lost)
    assert not missing, missing


@pytest.mark.parametrize("stage", ["quality_signals", "minhash_signatures", "train"])
def test_what_a_fresh_interpreter_loads_is_covered(stage):
    """Importing a stage module in a fresh interpreter loads no project module outside its identity."""
    s = registry.STAGES[stage]
    code = f"import sys, {s.fn.__module__}; print(' '.join(n for n in sys.modules if n.split('.')[0] == 'tasks'))"
    loaded = set(subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.split())
    assert s.fn.__module__ in loaded
    assert loaded - set(code_of(s).modules) == set()


def test_lazy_imports_are_covered():
    """tasks/signals/quality_signals.py imports its model loaders inside a function: they are part of its identity."""
    src = inspect.getsource(importlib.import_module(QS.fn.__module__))
    assert "from tasks.signals import quality_models" in src
    assert "tasks.signals.quality_models" in code_of(QS).modules


def _commit(root, stage_name, identity):
    ref = datasets.DatasetRef(str(root), "tiny", stage_name, datasets.make_version(stage_name, identity.digest))
    datasets.write_shard(ref, datasets.shard_name(0), pa.table({"doc_id": ["a"]}))
    datasets.commit(ref, code=identity)
    return ref


def test_stale_lists_versions_whose_code_moved_and_says_what(tmp_path, tree, monkeypatch):
    from flows.stale import stale_versions

    root = tmp_path / "store"
    _commit(root, "exact_dedup", code_of(registry.STAGES["exact_dedup"]))  # current: not stale
    kernels = tree / "tasks" / "signals" / "_rpv2_kernels.py"
    kernels.write_text(kernels.read_text() + "\n\ndef _older():\n    return 0\n")
    old = _commit(root, "quality_signals", _identity(QS, tree))  # as recorded by code from before a kernel fix
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda n: "0.0.1" if n == "datatrove" else real(n))
    dt = _commit(root, "datatrove_signals", code_of(registry.STAGES["datatrove_signals"]))
    monkeypatch.setattr(importlib.metadata, "version", real)

    rows = {r["ref"]: r for r in stale_versions(str(root))}
    assert set(rows) == {str(old), str(dt)}
    assert rows[str(old)]["changes"] == ["module tasks.signals._rpv2_kernels changed"]
    assert rows[str(dt)]["changes"] == [f"package datatrove 0.0.1 -> {real('datatrove')}"]

    from typer.testing import CliRunner

    import quarry_cli

    out = CliRunner().invoke(quarry_cli.app, ["datasets", "--stale", "--root", str(root)], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert str(old) in out.output and "tasks.signals._rpv2_kernels changed" in out.output
    assert "exact_dedup" not in out.output
