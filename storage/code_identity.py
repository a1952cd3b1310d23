"""Code identity of a stage: a digest over every project module its code can run, plus declared package versions.

Hashing only the module that defines a stage missed fixes in helper modules (e.g. tasks/_rpv2_kernels.py behind
quality_signals). Here the import closure is read from source with ``ast`` (nothing is imported, so lazy imports
inside functions count too), each module is hashed after dropping comments, docstrings and formatting, and the
per-module hashes are kept so a manifest can say *which* module changed.

Generic storage layer: stdlib only, no imports from tasks/, flows/, ray_cluster/ or services/.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import inspect
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_REPO_ROOT = Path(__file__).resolve().parents[1]
NO_RECORD = "recorded before code identities (no per-module record)"

# path -> ((mtime_ns, size, inode), module hash, raw import refs). One entry per path, so the cache stays bounded;
# a rewritten file (new mtime/size, or a new inode after an editor's atomic rename) is parsed again.
_FILE_CACHE: dict[str, tuple[tuple[int, int, int], str, tuple[tuple[int, str, tuple[str, ...]], ...]]] = {}


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
    return tree


def normalized_source(path: str | os.PathLike[str]) -> str:
    """The module's code without comments, docstrings or formatting (``ast.unparse`` of the docstring-free tree)."""
    return ast.unparse(_strip_docstrings(ast.parse(Path(path).read_bytes(), filename=str(path))))


def _import_refs(tree: ast.AST) -> tuple[tuple[int, str, tuple[str, ...]], ...]:
    """Every import in the file as (level, module, names); ``import_module("x")`` counts as ``import x``."""
    refs: list[tuple[int, str, tuple[str, ...]]] = []
    for node in ast.walk(tree):  # walks function bodies and `if TYPE_CHECKING:` blocks too
        if isinstance(node, ast.Import):
            refs.extend((0, alias.name, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            refs.append((node.level, node.module or "", tuple(a.name for a in node.names if a.name != "*")))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            arg = node.args[0]
            if (
                name in ("import_module", "__import__")
                and isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
            ):
                text = arg.value
                level = len(text) - len(text.lstrip("."))  # import_module(".x", __package__) is relative
                refs.append((level, text[level:], ()))
    return tuple(refs)


def _file_info(path: Path) -> tuple[str, tuple[tuple[int, str, tuple[str, ...]], ...]]:
    st = path.stat()
    stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
    key = str(path)
    hit = _FILE_CACHE.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1], hit[2]
    data = path.read_bytes()
    try:
        tree = ast.parse(data, filename=key)
        refs = _import_refs(tree)
        text = ast.unparse(_strip_docstrings(tree)).encode()
    except (SyntaxError, ValueError):  # unparsable file: fall back to its raw bytes, no imports followed
        refs, text = (), data
    digest = hashlib.sha1(text).hexdigest()[:12]
    _FILE_CACHE[key] = (stamp, digest, refs)
    return digest, refs


def _resolve(name: str, root: Path) -> Path | None:
    """The .py file for dotted ``name`` under ``root`` (module file or package __init__), else None."""
    if not name or any(not part.isidentifier() for part in name.split(".")):
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _default_root(name: str) -> Path:
    """The directory holding ``name``'s top-level package; find_spec of a top-level name executes nothing."""
    top = name.split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        if spec.submodule_search_locations:
            return Path(list(spec.submodule_search_locations)[0]).resolve().parent
        if spec.origin and spec.origin.endswith(".py"):
            return Path(spec.origin).resolve().parent
    return _REPO_ROOT


def _absolute(level: int, module: str, importer: str, is_package: bool) -> str | None:
    if level == 0:
        return module
    parts = importer.split(".") if is_package else importer.split(".")[:-1]
    if level > len(parts):
        return None  # relative import beyond the top-level package: Python raises too
    parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts + ([module] if module else []))


def module_closure(module_names: Iterable[str], root: Path | None = None) -> dict[str, Path]:
    """Transitive import closure of ``module_names`` restricted to .py files under ``root``, by dotted name (sorted).

    Read with ``ast``, never imported. Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py``, so those
    are included. Third-party and stdlib modules do not resolve under ``root`` and are skipped.
    """
    seeds = list(module_names)
    if not seeds:
        return {}
    root = Path(root).resolve() if root is not None else _default_root(seeds[0])
    found: dict[str, Path] = {}
    seen: set[str] = set()
    queue = list(seeds)
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        queue.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages' __init__ run first
        path = _resolve(name, root)
        if path is None:
            continue
        found[name] = path
        is_package = path.name == "__init__.py"
        for level, module, names in _file_info(path)[1]:
            base = _absolute(level, module, name, is_package)
            if base is None:
                continue
            queue.append(base)
            # `from x.y import z`: z may be a submodule; it only counts when it resolves to a file under root
            queue.extend(f"{base}.{n}" for n in names)
    return dict(sorted(found.items()))


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """Installed version of each declared distribution; "absent" when not installed (an optional engine)."""
    out: dict[str, str] = {}
    for name in sorted(set(names)):
        try:
            out[name] = importlib.metadata.version(name)  # looked up at call time so tests can monkeypatch it
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


@dataclass(frozen=True)
class CodeIdentity:
    digest: str
    modules: dict[str, str] = field(default_factory=dict)  # dotted module name -> 12-hex sha1 of normalized source
    packages: dict[str, str] = field(default_factory=dict)  # distribution -> version ("absent" if not installed)
    files: dict[str, str] = field(default_factory=dict)  # data file (rules, templates, word lists) -> sha1 of bytes

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "modules": dict(self.modules), "packages": dict(self.packages),
                "files": dict(self.files)}

    def diff(self, recorded: Any) -> list[str]:
        """Human lines saying what changed since ``recorded`` (a to_json() dict); [] when nothing did."""
        if not isinstance(recorded, dict) or not isinstance(recorded.get("modules"), dict):
            return [NO_RECORD]  # None, a bare code_hash string, or {"code_hash": ...} from older manifests
        old_mods: dict[str, str] = recorded["modules"]
        old_pkgs: dict[str, str] = recorded.get("packages") or {}
        lines = [f"module {m} removed" for m in sorted(old_mods.keys() - self.modules.keys())]
        lines += [f"module {m} added" for m in sorted(self.modules.keys() - old_mods.keys())]
        lines += [
            f"module {m} changed" for m in sorted(self.modules) if m in old_mods and old_mods[m] != self.modules[m]
        ]
        old_files: dict[str, str] = recorded.get("files") or {}
        lines += [f"file {f} removed" for f in sorted(old_files.keys() - self.files.keys())]
        lines += [f"file {f} added" for f in sorted(self.files.keys() - old_files.keys())]
        lines += [f"file {f} changed" for f in sorted(self.files) if f in old_files and old_files[f] != self.files[f]]
        for pkg in sorted(old_pkgs.keys() | self.packages.keys()):
            before, after = old_pkgs.get(pkg), self.packages.get(pkg)
            if before is None:
                lines.append(f"package {pkg} added ({after})")
            elif after is None:
                lines.append(f"package {pkg} removed (was {before})")
            elif before != after:
                lines.append(f"package {pkg} {before} -> {after}")
        if not lines and recorded.get("digest") not in (None, self.digest):
            lines.append("digest changed with the same modules and packages (digest scheme changed?)")
        return lines


def _module_name(obj: Any) -> str | None:
    if isinstance(obj, str):
        return obj
    if inspect.ismodule(obj):
        return obj.__name__
    while isinstance(obj, functools.partial):  # a partial's own __module__ is "functools"
        obj = obj.func
    return getattr(obj, "__module__", None) or type(obj).__module__


def code_identity(
    entry: Any, *, extra_modules: Iterable[Any] = (), packages: Iterable[str] = (), root: Path | None = None
) -> CodeIdentity:
    """Identity of ``entry`` (function, class, module, or a tuple/list of them) and everything it imports in the
    project, plus ``extra_modules`` (modules or dotted names reached some other way, e.g. by registry lookup; a
    ``Path`` is a data file or folder the code reads: rule sets, templates, word lists) and the versions of the
    declared ``packages``."""
    objs = list(entry) if isinstance(entry, (tuple, list)) else [entry]
    extra = list(extra_modules)
    data = [Path(x) for x in extra if isinstance(x, os.PathLike)]  # data files or folders the code reads
    seeds = [n for n in map(_module_name, [*objs, *(x for x in extra if not isinstance(x, os.PathLike))]) if n]
    closure = module_closure(seeds, root)
    modules = {name: _file_info(path)[0] for name, path in closure.items()}
    pkgs = package_versions(packages)
    base = Path(root).resolve() if root is not None else _default_root(seeds[0]) if seeds else None
    files = _data_files(data, base)
    h = hashlib.sha1()
    for name, digest in sorted(modules.items()):
        h.update(f"module {name} {digest}\n".encode())
    for name, version in sorted(pkgs.items()):
        h.update(f"package {name} {version}\n".encode())
    for name, digest in sorted(files.items()):
        h.update(f"file {name} {digest}\n".encode())
    return CodeIdentity(digest=h.hexdigest(), modules=modules, packages=pkgs, files=files)


def _data_files(paths: list[Path], root: Path | None) -> dict[str, str]:
    """sha1 of the bytes of every data file (a folder: each file in it but Python sources and caches), named by its
    path under ``root`` so an identity does not depend on where the checkout lives."""
    out: dict[str, str] = {}
    for base in paths:
        base = base.resolve()
        found = [base] if base.is_file() else sorted(
            f for f in base.rglob("*") if f.is_file() and f.suffix != ".py" and "__pycache__" not in f.parts)
        for f in found:
            try:
                name = f.relative_to(root).as_posix() if root is not None else f.as_posix()
            except ValueError:
                name = f.as_posix()
            out[name] = hashlib.sha1(f.read_bytes()).hexdigest()[:12]
    return out
