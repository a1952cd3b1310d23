"""A flow run's claim and lease on what it writes (storage/pointers.py, storage/leases.py), and the pointer moves of
each stage it runs: the flow-side half of issue 34's "views follow pointers, gc honours runs".

* ``holding(cfg, recipe)``: at the start of a run, claim every dataset the recipe writes for the recipe (another
  recipe is refused unless it says ``same_dataset_as``), then hold a lease on them until the run ends.
* flows/run.py's ``stage`` leases each stage's inputs before it runs (``leases.lease_inputs``) and moves its
  pointers after (``pointers.staged``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import datasets_cfg
from storage import leases, pointers

REPO = Path(__file__).resolve().parents[1]


def recipe_id(path: str | Path) -> str:
    """A recipe's identity in claims: its path inside the repository (the same on every checkout), else absolute."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(resolved)


def written(cfg: datasets_cfg.RunConfig) -> list[str]:
    """The datasets a recipe's runs write: its dataset, its quality classifier's two sets, an experiment's table."""
    names = [cfg.dataset]
    if cfg.quality_classifier is not None:
        names += [f"{cfg.dataset}_qc_positive", f"{cfg.dataset}_qc_negative"]
    if cfg.experiment is not None:
        names.append(cfg.experiment.name)
    return names


@contextlib.contextmanager
def holding(cfg: datasets_cfg.RunConfig, recipe: str | Path, committed: list[str], recipe_hash: str | None = None,
            run_id: str | None = None) -> Iterator[leases.Lease]:
    """Claim (or check the claim on) every dataset the recipe writes, then lease them for the block; ``committed``:
    the list the run's provenance fills with the versions it commits (``datasets.using_run``)."""
    me = recipe_id(recipe)
    same_as = recipe_id(cfg.same_dataset_as) if cfg.same_dataset_as else None
    with leases.holding(cfg.root, written(cfg), recipe=me, run_id=run_id) as lease:
        lease.committed = committed
        for name in written(cfg):
            pointers.claim(cfg.root, name, me, same_as=same_as, recipe_hash=recipe_hash)
        yield lease
