"""Names and paths of a recipe that become files: checked at load, so that they fail before any flow starts.

A dataset (or experiment) name is a folder under the root, and so are the names derived from it; a file name may
have 255 bytes (NAME_MAX on Linux and macOS, and on S3 tools that mirror keys to disk). A 300-character name used
to pass and fail with ENAMETOOLONG after the flow had started and retried. A path that runs into a symlink loop
was a RuntimeError from Path.resolve (relative paths) or "not found" once the flow ran (absolute ones).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field

NAME_MAX_BYTES = 255
DERIVED_NAME_SUFFIXES = ("_qc_positive", "_qc_negative")  # flows/curate.py: the quality classifier's two datasets
MAX_NAME_CHARS = 200  # the pattern is ASCII: 200 + the longest suffix (12) stays 43 bytes under NAME_MAX
NAME_PATTERN = r"^[a-z][a-z0-9_]*$"  # a folder name and a SQL identifier (views are `{dataset}__{stage}`)
_ECHO = 200  # characters of a path an error may quote


def _name_fits(name: str) -> str:
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"{len(name)} characters; at most {MAX_NAME_CHARS}: the name is a folder under the root "
                         f"(with `{{name}}{DERIVED_NAME_SUFFIXES[0]}` beside it), and a file name may have "
                         f"{NAME_MAX_BYTES} bytes")
    return name


# the pattern first (a cheap, bounded check: only ASCII letters, digits, `_`), then the length with its reason
Name = Annotated[str, Field(pattern=NAME_PATTERN), AfterValidator(_name_fits)]


def _short(path: str) -> str:
    return path if len(path) <= _ECHO else f"{path[:_ECHO]}... ({len(path)} chars)"


def resolve_path(path: str, base: Path) -> str:
    """``path`` made absolute against the recipe's folder ``base`` (URLs and "" as given); ValueError when it runs
    into a symlink loop, saying so."""
    if not path or "://" in path:  # "" stays "": the params reject it, not "the recipe's folder"
        return path
    full = path if os.path.isabs(path) else str(base / path)
    loop = ValueError(f"{_short(path)} runs into a symlink loop (ELOOP: too many levels of symbolic links)")
    try:
        os.stat(full)  # the kernel walks every component: a loop anywhere on the way (even below a glob) is ELOOP
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise loop from None
    if os.path.isabs(path):
        return path
    try:
        return str(Path(full).resolve())
    except (RuntimeError, OSError) as e:  # Python 3.11-3.12: RuntimeError("Symlink loop"); 3.13: OSError(ELOOP)
        if isinstance(e, RuntimeError) or e.errno == errno.ELOOP:
            raise loop from None
        raise ValueError(f"{_short(path)}: {e.strerror}") from None
