"""Which document of a duplicate group survives, shared by exact and MinHash dedup: one parser of the recipe string.

"longest" (the longest text), "lowest_doc_id", or "<column>:asc|desc" over a column of the documents (e.g. a quality
score; RPv2 keeps the first-seen copy processing snapshots newest to oldest, i.e. "<date column>:desc"). Ties always
go to the lowest doc_id, and a document without a value never beats one with a value (nulls last, in both orders).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SPEC = re.compile(r"^(longest|lowest_doc_id|[A-Za-z_][A-Za-z0-9_.]*:(asc|desc))$")


@dataclass(frozen=True, slots=True)
class Priority:
    """A parsed survivor priority: `kind` is "longest", "lowest_doc_id" or "column" (then `column` and `order`)."""

    kind: str
    column: str | None = None
    order: str = "asc"  # "asc" | "desc", for kind "column"

    @classmethod
    def parse(cls, spec: str) -> Priority:
        if not isinstance(spec, str) or not _SPEC.match(spec):
            raise ValueError(f"priority must be 'longest', 'lowest_doc_id' or '<column>:asc|desc', got {spec!r}")
        if spec in ("longest", "lowest_doc_id"):
            return cls(spec)
        column, order = spec.rsplit(":", 1)
        return cls("column", column, order)

    @property
    def descending(self) -> bool:
        return self.order == "desc"

    def input_columns(self, text_column: str, length_column: str, available: list[str]) -> list[str]:
        """The document column a dedup's global step reads for this priority: for "longest" the length column a
        stage before it wrote (so the step never reads the text), else the text; none for "lowest_doc_id"."""
        if self.kind == "longest":
            return [length_column if length_column in available else text_column]
        return [self.column] if self.kind == "column" else []
