"""storage.code_identity: AST import closure, normalized module hashes, package versions, diffs and the file cache.

The synthetic package under tmp_path is only ever read by the AST reader, never imported.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import textwrap
from pathlib import Path

import pytest

from storage import code_identity as ci

PKG = {
    "pkg/__init__.py": '"""The package."""\n',
    "pkg/stage.py": '''
        """A stage whose helpers are imported lazily."""
        from __future__ import annotations

        import importlib
        import json
        from typing import TYPE_CHECKING

        import numpy as np
        import yaml

        from . import helpers
        from .sub.deep import thing

        if TYPE_CHECKING:
            from pkg.typing_only import T


        def run(x):
            """Run it."""
            from pkg import kernels  # lazy: only runs when the stage does

            late = importlib.import_module("pkg.late")
            return kernels.f(x) + late.g(x) + helpers.h(x) + thing + len(json.dumps(np.zeros(1).tolist()))
    ''',
    "pkg/helpers.py": "from .util import z\n\n\ndef h(x):\n    return x * z\n",
    "pkg/util.py": "z = 2\n",
    "pkg/sub/__init__.py": "",
    "pkg/sub/deep.py": "from ..base import B\n\nthing = B\n",
    "pkg/base.py": "B = 1\n",
    "pkg/kernels.py": '''
        """Kernels."""


        def f(x):
            # add one
            return x + 1
    ''',
    "pkg/late.py": "def g(x):\n    return x\n",
    "pkg/typing_only.py": "T = int\n",
    "pkg/other.py": "import pkg.kernels\n",  # imports the closure, but nothing imports it
}
EXPECTED = [
    "pkg",
    "pkg.base",
    "pkg.helpers",
    "pkg.kernels",
    "pkg.late",
    "pkg.stage",
    "pkg.sub",
    "pkg.sub.deep",
    "pkg.typing_only",
    "pkg.util",
]


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


@pytest.fixture
def pkg(tmp_path: Path) -> Path:
    for rel, text in PKG.items():
        write(tmp_path, rel, text)
    return tmp_path


def ident(root: Path, **kw) -> ci.CodeIdentity:
    return ci.code_identity("pkg.stage", root=root, **kw)


def test_closure_follows_lazy_relative_and_import_module_imports(pkg: Path) -> None:
    closure = ci.module_closure(["pkg.stage"], root=pkg)
    assert list(closure) == EXPECTED  # sorted; no json/importlib/typing/numpy/yaml, no pkg.other
    assert closure["pkg.kernels"] == (pkg / "pkg/kernels.py").resolve()
    assert closure["pkg.sub"] == (pkg / "pkg/sub/__init__.py").resolve()


def test_closure_includes_parent_package_inits(pkg: Path) -> None:
    assert list(ci.module_closure(["pkg.sub.deep"], root=pkg)) == ["pkg", "pkg.base", "pkg.sub", "pkg.sub.deep"]


def test_from_import_of_a_non_module_name_and_namespace_dirs(tmp_path: Path) -> None:
    write(tmp_path, "ns/inner.py", "from ns.leaf import value, missing\nimport os.path\n")  # ns/ has no __init__
    write(tmp_path, "ns/leaf.py", "value = 1\n")
    assert list(ci.module_closure(["ns.inner"], root=tmp_path)) == ["ns.inner", "ns.leaf"]


def test_code_edit_in_kernel_changes_digest_and_diff_names_it(pkg: Path) -> None:
    before = ident(pkg)
    write(pkg, "pkg/kernels.py", "def f(x):\n    return x + 2\n")
    after = ident(pkg)
    assert after.digest != before.digest
    assert after.diff(before.to_json()) == ["module pkg.kernels changed"]
    assert after.diff(after.to_json()) == []


@pytest.mark.parametrize(
    "new_text",
    [
        '"""Kernels."""\n\n\ndef f(x):\n    # add ONE (reworded comment)\n    return x + 1\n',
        '"""Kernels, now with a much longer module docstring."""\n\n\ndef f(x):\n    """New."""\n    return x + 1\n',
        "def f(x):\n\n\n    return x+1   # no docstring, odd spacing\n\n\n",
    ],
    ids=["comment", "docstring", "whitespace"],
)
def test_comment_docstring_and_whitespace_edits_keep_the_digest(pkg: Path, new_text: str) -> None:
    before = ident(pkg)
    (pkg / "pkg/kernels.py").write_text(new_text)
    assert ident(pkg).digest == before.digest


def test_normalized_source_drops_docstrings_everywhere(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.py",
        '"""Mod."""\nclass C:\n    """Only a docstring."""\n\nasync def f():\n    "Doc."\n    return 1\n',
    )
    assert ci.normalized_source(path) == "class C:\n    pass\n\nasync def f():\n    return 1"


def test_new_and_dropped_imports_show_as_added_and_removed(pkg: Path) -> None:
    before = ident(pkg)
    write(pkg, "pkg/extra.py", "E = 3\n")
    write(pkg, "pkg/helpers.py", "from . import extra\n\n\ndef h(x):\n    return x * extra.E\n")  # drops util
    after = ident(pkg)
    assert after.digest != before.digest
    assert after.diff(before.to_json()) == [
        "module pkg.util removed",
        "module pkg.extra added",
        "module pkg.helpers changed",
    ]


def test_declared_packages_enter_the_digest(pkg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    yaml_only = ident(pkg, packages=("pyyaml",))
    both = ident(pkg, packages=("pyyaml", "numpy"))
    assert yaml_only.packages == {"pyyaml": importlib.metadata.version("pyyaml")}
    assert both.packages["numpy"] == importlib.metadata.version("numpy")
    assert len({ident(pkg).digest, yaml_only.digest, both.digest}) == 3
    assert both.diff(yaml_only.to_json()) == [f"package numpy added ({both.packages['numpy']})"]

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda n: "99.0" if n == "numpy" else real(n))
    upgraded = ident(pkg, packages=("pyyaml", "numpy"))
    assert upgraded.digest != both.digest
    assert upgraded.diff(both.to_json()) == [f"package numpy {both.packages['numpy']} -> 99.0"]


def test_a_missing_distribution_is_absent_not_an_error() -> None:
    assert ci.package_versions(["no-such-distribution-quarry-test"]) == {"no-such-distribution-quarry-test": "absent"}


def test_file_cache_hits_and_invalidates_when_a_file_is_rewritten(pkg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parses: list[int] = []
    real = ci._import_refs
    monkeypatch.setattr(ci, "_import_refs", lambda tree: parses.append(1) or real(tree))
    first = ident(pkg)
    n = len(parses)
    assert n == len(EXPECTED)
    assert ident(pkg) == first and len(parses) == n  # warm: nothing parsed again

    kernels = pkg / "pkg/kernels.py"
    st = kernels.stat()
    text = kernels.read_text()
    kernels.write_text(text.replace("x + 1", "x - 1"))  # same size: only the mtime tells
    os.utime(kernels, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    same_size = ident(pkg)
    assert same_size.digest != first.digest and len(parses) == n + 1

    kernels.write_text(text.replace("x + 1", "x + 100"))  # size changes
    os.utime(kernels, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # even with the previous mtime
    assert ident(pkg).digest not in (first.digest, same_size.digest) and len(parses) == n + 2


def test_diff_tolerates_records_from_before_code_identities(pkg: Path) -> None:
    now = ident(pkg)
    for old in (None, "3f2a9c", {"code_hash": "3f2a9c"}):
        assert now.diff(old) == [ci.NO_RECORD]
    assert now.diff({**now.to_json(), "digest": "0" * 40}) == [
        "digest changed with the same modules and packages (digest scheme changed?)"
    ]


def test_function_object_entry_on_a_real_module() -> None:
    from storage import datasets

    identity = ci.code_identity(datasets.code_hash)  # root derived from the `storage` package
    assert {"storage", "storage.datasets", "storage.layers", "storage.temporaries"} <= identity.modules.keys()
    assert not any(m.split(".")[0] in ("pyarrow", "fsspec", "json") for m in identity.modules)
    assert all(len(h) == 12 for h in identity.modules.values())
    assert ci.code_identity((datasets, datasets.code_hash)).digest == identity.digest
    assert ci.code_identity(functools.partial(datasets.code_hash)).digest == identity.digest
    with_extra = ci.code_identity(datasets.code_hash, extra_modules=["storage.catalog"])
    assert "storage.catalog" in with_extra.modules
