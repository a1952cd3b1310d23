"""A registered stage function carries the name of the stage(s) it implements.

    @implements("heldout", "train_split")
    def split_by_doc_id(batch, params): ...

The registry (tasks/registry.py) refuses a Stage whose ``fn`` does not name it, so reading a function tells which
stage runs it, and a stage's table entry cannot silently point at another stage's function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


def implements(*stages: str) -> Callable[[F], F]:
    """Mark a function (or actor class) as the ``fn`` of the registry stages ``stages``; returns it unchanged."""
    if not stages or not all(isinstance(s, str) and s for s in stages):
        raise ValueError(f"implements() needs one or more stage names, got {stages!r}")

    def mark(fn: F) -> F:
        fn.__stages__ = tuple(dict.fromkeys((*stages_of(fn), *stages)))
        return fn

    return mark


def stages_of(fn: Callable) -> tuple[str, ...]:
    """The stage names ``fn`` itself was marked with (empty when it was never marked; a subclass of a marked actor
    class does not inherit its parent's stages)."""
    return tuple(getattr(fn, "__dict__", {}).get("__stages__", ()))
