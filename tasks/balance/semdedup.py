"""SemDeDup: drop semantic near-duplicates inside k-means clusters (Abbas et al. 2023, arXiv 2303.09540).

As NeMo Curator does it: within each cluster, rank members by distance to the centroid ("hard" = farthest first,
NeMo's default), compute pairwise cosine similarity in column blocks, and drop a member whose maximum similarity to
an *earlier-ranked* member is ≥ 1 - eps. Earlier members are compared whether or not they were dropped themselves,
as in the paper and NeMo. Runs before balancing (spec "Related: semantic dedup"): semdedup prunes near-duplicates
inside clusters, balancing then redistributes mass across them.

Kind (c), one global step over (doc_id, cluster, embedding[, distance]):

    flags = semdedup(table, SemDeDupParams(eps=0.01))   # doc_id, sd_keep, sd_duplicate_of, sd_max_similarity

Output rows are in input order; nothing is removed, the engine joins `sd_keep` back onto the documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from tasks.balance.hkmeans import embeddings_matrix
from tasks.common.stage import implements

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, kw_only=True, slots=True)
class SemDeDupParams:
    """SemDeDup settings.

    eps: drop when max cosine similarity to an earlier-ranked member ≥ 1 - eps; 0.01 is NeMo Curator's
        `eps_to_extract` default, the spec allows 0.01-0.07 (the SemDeDup paper sweeps this range on LAION/C4).
    which_to_keep: "hard" keeps members far from the centroid first (NeMo default, paper's finding that
        prototypical examples are the redundant ones), "easy" the closest, "random" a seeded permutation.
    distance_column: ranking key when present (km_l1_dist from tasks/balance/hkmeans.py); else cosine distance to the
        normalized mean of the cluster's embeddings.
    block_bytes: budget for one cluster-size × block float32 similarity block.
    """

    eps: float = 0.01
    which_to_keep: str = "hard"
    doc_id_column: str = "doc_id"
    cluster_column: str = "km_l1"
    embedding_column: str = "embedding"
    distance_column: str = "km_l1_dist"
    seed: int = 0
    block_bytes: int = 1 << 27
    device: str = "auto"

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps < 1.0:
            raise ValueError(f"eps must be in [0, 1), got {self.eps}")
        if self.which_to_keep not in ("hard", "easy", "random"):
            raise ValueError(f"which_to_keep must be 'hard', 'easy' or 'random', got {self.which_to_keep!r}")
        if self.block_bytes < 1:
            raise ValueError(f"block_bytes must be >= 1, got {self.block_bytes}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:i]', got {self.device!r}")


def _max_earlier_similarity(e: torch.Tensor, block_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For ranked unit vectors e [n, d]: max cosine to any earlier row, and its index (-inf / -1 for row 0)."""
    import torch

    n = e.shape[0]
    best = torch.full((n,), float("-inf"), device=e.device)
    arg = torch.full((n,), -1, dtype=torch.int64, device=e.device)
    block = max(1, block_bytes // (4 * max(n, 1)))
    for j0 in range(1, n, block):
        j1 = min(n, j0 + block)
        sims = e[:j1] @ e[j0:j1].T  # [j1, b]: rows i, columns j
        rows = torch.arange(j1, device=e.device)[:, None]
        cols = torch.arange(j0, j1, device=e.device)[None, :]
        sims.masked_fill_(rows >= cols, float("-inf"))  # only earlier-ranked rows (upper triangle, NeMo triu(1))
        best[j0:j1], arg[j0:j1] = sims.max(dim=0)
    return best, arg


def semdedup(table: pa.Table, params: SemDeDupParams = SemDeDupParams()) -> pa.Table:
    """doc_id, sd_keep, sd_duplicate_of (doc_id of the most similar earlier member; null when kept), sd_max_similarity."""
    for c in (params.doc_id_column, params.cluster_column, params.embedding_column):
        if c not in table.column_names:
            raise ValueError(f"semdedup needs {c!r}; have {table.column_names}")
    n = table.num_rows
    ids = table.column(params.doc_id_column).to_pylist()
    clusters_col = table.column(params.cluster_column)
    if clusters_col.null_count:
        raise ValueError(f"{clusters_col.null_count} rows have a null {params.cluster_column!r}; cluster them first")
    clusters = clusters_col.to_numpy().astype(np.int64)
    x = embeddings_matrix(table, params.embedding_column)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) if n else x
    has_dist = params.distance_column in table.column_names and table.column(params.distance_column).null_count == 0
    dist = table.column(params.distance_column).to_numpy().astype(np.float64) if has_dist else None
    rng = np.random.default_rng(params.seed)
    import torch  # here, not at the top: every Ray worker imports this module through the registry

    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if params.device == "auto" else params.device
    )

    keep = np.ones(n, dtype=bool)
    dup_of = np.full(n, -1, dtype=np.int64)
    max_sim = np.full(n, np.nan, dtype=np.float32)
    order = np.argsort(clusters, kind="stable")
    bounds = np.flatnonzero(np.r_[True, clusters[order][1:] != clusters[order][:-1], True])
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        members = order[s:e]
        if len(members) < 2:
            continue
        emb = x[members]
        if params.which_to_keep == "random":
            key = rng.random(len(members))
        else:
            if dist is not None:
                d = dist[members]
            else:  # cosine distance to the normalized cluster mean
                centroid = emb.mean(0)
                d = 1.0 - emb @ (centroid / max(np.linalg.norm(centroid), 1e-12))
            key = -d if params.which_to_keep == "hard" else d
        ranked = members[np.lexsort((members, key))]
        et = torch.as_tensor(x[ranked], device=device)
        best, arg = _max_earlier_similarity(et, params.block_bytes)
        best, arg = best.cpu().numpy(), arg.cpu().numpy()
        has_prev = arg >= 0
        max_sim[ranked[has_prev]] = best[has_prev]
        drop = has_prev & (best >= 1.0 - params.eps)
        keep[ranked[drop]] = False
        dup_of[ranked[drop]] = ranked[arg[drop]]
    return pa.table(
        {
            params.doc_id_column: table.column(params.doc_id_column),
            "sd_keep": pa.array(keep),
            "sd_duplicate_of": pa.array([ids[j] if j >= 0 else None for j in dup_of], pa.string()),
            "sd_max_similarity": pa.array(max_sim, pa.float32(), mask=np.isnan(max_sim)),
        }
    )


@implements("semdedup")
def semdedup_stage(tables: dict, params: SemDeDupParams, ctx) -> tuple[pa.Table, dict]:
    """The ``semdedup`` stage: semantic near-duplicates inside each level-1 cluster, before balancing."""
    from tasks.select.selection import attach, embedded

    out = semdedup(attach(embedded(tables["embed"]), tables["hkmeans"]), params)
    return out, {"duplicates": int(out.num_rows - int(np.asarray(out.column("sd_keep")).sum()))}
