"""The yield check: warn when one stage removes more than a set share of the corpus (issue 35).

``line_dedup`` with CCNet's normalization (digits -> 0) emptied 199,975 of 200,000 distinct one-line documents
``doc <i> <n>`` (all normalize to ``doc 0 0``) and said nothing. Any document-to-document stage can do that with a
wrong setting, so the check is generic, from what the stage reports: the documents its main input keeps (rows, or
rows with ``keep`` true where a filter or dedup ran) against the documents its output keeps, just before the
commit. Over the threshold: a warning on the ``quarry`` logger (which reaches the Prefect run log) naming the stage
and the share, and the same words in the version's stats (``stats.yield``). It never fails the stage: a filter
meant to drop most of a crawl (FineWeb keeps ~10-20 % of Common Crawl text) is legitimate, and the user sets the
threshold.

Threshold, first found: the stage params' ``max_removed_share``, the ``QUARRY_MAX_REMOVED_SHARE`` environment
variable (a profile's ``env_vars`` or the shell), else 0.5. 1 turns the warning off.

Cost: the ``keep`` column of the input and of the output (one byte a row), or the row counts when there is none.
Only stages whose input and output are both documents (a ``doc_id`` and a ``text`` column) are checked: a hashes,
edges or report stage changes the row kind, not the corpus.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage import datasets, layers
from storage.datasets import DatasetRef

log = logging.getLogger("quarry")

DEFAULT_MAX_REMOVED_SHARE = 0.5
ENV = "QUARRY_MAX_REMOVED_SHARE"
_DOC_COLUMNS = {"doc_id", "text"}


def threshold(params: Any) -> float:
    value = getattr(params, "max_removed_share", None)
    source = "params.max_removed_share"
    if value is None and os.environ.get(ENV):
        value, source = os.environ[ENV], ENV
    if value is None:
        return DEFAULT_MAX_REMOVED_SHARE
    try:
        share = float(value)
    except ValueError:
        raise ValueError(f"{source} must be a number between 0 and 1, got {value!r}") from None
    if not 0 <= share <= 1:
        raise ValueError(f"{source} must be between 0 and 1, got {value!r}")
    return share


def _kept(table: pa.Table) -> int:
    if "keep" not in table.column_names:
        return table.num_rows
    return int(pc.sum(pc.fill_null(table.column("keep"), False).cast(pa.int64())).as_py() or 0)


def _input_kept(parent: DatasetRef) -> int | None:
    """Documents ``parent`` keeps, or None when it is not a documents table."""
    cols = layers.column_names(parent)
    if not _DOC_COLUMNS <= set(cols):
        return None
    if "keep" in cols:
        return _kept(datasets.read_table(parent, columns=["keep"]))
    return int(datasets.read_manifest(parent)["num_rows"])


def _output_columns(dst: DatasetRef) -> set[str]:
    """The columns of the shards written so far (one footer read)."""
    names = sorted(datasets.existing_shards(dst))
    if not names:
        return set()
    fs, base = datasets.filesystem(dst.uri)
    with fs.open(posixpath.join(base, names[0]), "rb") as f:
        return set(pq.ParquetFile(f).schema_arrow.names)


def _output_rows(dst: DatasetRef) -> int:
    fs, base = datasets.filesystem(dst.uri)
    total = 0
    for name in datasets.existing_shards(dst):
        with fs.open(posixpath.join(base, name), "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def check(stage: Any, dst: DatasetRef, parents: Sequence[DatasetRef], params: Any,
          read_output: Callable[[DatasetRef, Sequence[str] | None], pa.Table], layer: dict | None = None) -> dict:
    """``{"yield": {...}}`` for the version's stats (empty when the stage is not documents -> documents), with a
    ``warning`` and a logged warning when the share of input documents the stage removed exceeds the threshold.
    ``read_output(dst, columns)`` reads the shards written so far (the commit has not happened yet)."""
    if not parents:
        return {}
    kept_in = _input_kept(parents[0])
    if kept_in is None:
        return {}
    if not layer and not _DOC_COLUMNS <= _output_columns(dst):
        return {}
    if "keep" in _output_columns(dst):
        kept_out = _kept(read_output(dst, ["keep"]))  # never the text
    elif layer:  # a layer writes only its own columns; without `keep` among them it kept what its input kept
        kept_out = kept_in
    else:  # every row is a kept document: count them from the footers (a zero-column read loses its row count)
        kept_out = _output_rows(dst)
    limit = threshold(params)
    share = (kept_in - kept_out) / kept_in if kept_in else 0.0
    record: dict[str, Any] = {"kept_in": kept_in, "kept_out": kept_out, "removed_share": round(share, 6),
                              "max_removed_share": limit}
    if share > limit:
        record["warning"] = (
            f"{stage.name} removed {share:.1%} of its input's documents ({kept_in - kept_out:,} of {kept_in:,}), "
            f"over the {limit:.0%} threshold (params.max_removed_share / ${ENV}): check its settings"
        )
        log.warning(record["warning"])
    return {"yield": record}
