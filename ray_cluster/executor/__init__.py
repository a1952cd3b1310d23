"""The generic executor: runs any registry stage (tasks/registry.py) over versioned storage. Knows no stage name.

    ref = executor.run(stage, [src], params, profile)

Every stage goes through the same derive -> skip-if-committed -> compute -> check -> commit sequence; the kind says
how it computes:

* ``source``  external files -> document shards (+ a quarantine side output), small files packed into one work item:
  ``list_inputs(params) -> ([(spec, uri)], stats)`` on the driver (``stats["groups"]``: the work items), and
  ``fn([(uri, spec)]) -> iterator of (docs, bad, file summaries)`` per item, written as the batches come;
* ``map``     ``fn(batch, params, **side)`` over every shard of the first input (side inputs: small tables);
* ``actor``   ``fn(params, **side)`` builds a model once per actor, then maps batches (a Ray Data actor pool);
* ``sql_map`` ``fn(params)`` is SQL over ``batch``, run per batch in a sandboxed DuckDB (rules are data, not code);
* ``sql``     a global step in DuckDB that spills to disk (dedup group-bys): ``fn(con, exprs, params, columns)``,
  ``exprs[role]`` a relation over the role's wide table, ``exprs[f"{role}_in_order"]`` the same with ``__shard``,
  ``__row`` (corpus order);
* ``global``  ``fn(tables, params, ctx)`` over whole small tables on one worker, with side outputs committed as
  siblings and ``ctx.checkpoint`` for per-level/per-step resume (k-means, sampling, packing, training, evaluation);
* ``llm``     Ray Data's LLM processor (vLLM engines) per shard, when the stage's params route there.

Resume and idempotence: versions are content-addressed, a committed version is skipped, a partial one resumes at
shard granularity, and the manifest is written last. Before the commit the rows the workers reported are checked
against the shards the driver can see, so a storage root that the workers do not share fails loudly instead of
committing empty versions. Worker-side code lives in this package or in tasks/; flows only compose.

The kinds live one per module over ``core`` (derive/skip, ``code_of``, secrets, the checked commit): ``source.py``,
``shards.py`` (map, actor, sql_map), ``sql.py``, ``whole.py`` (global), ``llm.py``; this module is the dispatch table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ray_cluster import runtime
from ray_cluster.executor import core, llm, shards, source, sql, whole
from ray_cluster.executor.core import InjectedFailure, check_shared_root, code_of, projection, resources, secret_env
from ray_cluster.executor.shards import sandboxed_duckdb, side_table, sql_over_batch
from ray_cluster.executor.sql import sql_inputs
from ray_cluster.executor.whole import Checkpoint, Context, local_dir
from storage import datasets
from storage.datasets import DatasetRef

__all__ = [
    "Checkpoint", "Context", "InjectedFailure", "check_shared_root", "code_of", "local_dir", "planned", "projection",
    "resources", "run", "run_chain", "sandboxed_duckdb", "secret_env", "side_table", "sql_inputs", "sql_over_batch",
]  # fmt: skip

# kind -> runner(stage, kind, inputs, params, profile, fail_from_shard, target)
KINDS: dict[str, Callable[..., DatasetRef]] = {
    "source": source.run, "map": shards.run, "actor": shards.run, "sql_map": shards.run, "sql": sql.run,
    "global": whole.run, "llm": llm.run,
}  # fmt: skip


def run(
    stage: Any,
    inputs: Sequence[DatasetRef | None],
    params: Any,
    profile: runtime.Profile,
    *,
    root: str | None = None,
    dataset: str | None = None,
    fail_from_shard: int | None = None,
) -> DatasetRef:
    """Run one registry stage on its inputs (positional, in ``stage.inputs`` order; None for an absent optional
    input) and return the committed version; a no-op when that version is already committed. ``root`` and
    ``dataset`` name where a stage without inputs writes (ingest), or another dataset for the output (an
    experiment's table)."""
    kind = stage.route(params) if stage.route else stage.kind
    fn = KINDS.get(kind)
    if fn is None:
        raise ValueError(f"stage {stage.name!r} has an unknown kind {kind!r}")
    target = {"root": root, "dataset": dataset}
    return fn(stage, kind, list(inputs), params, profile, fail_from_shard, target)


def planned(stage: Any, inputs: Sequence[DatasetRef | None], params: Any, *, root: str | None = None,
            dataset: str | None = None) -> DatasetRef:
    """The version ``run`` would write, derived the same way and computing nothing (``quarry run --plan``): a source
    stage lists its files (sizes and mtimes enter the version), any other hashes its parents, code and params."""
    if stage.kind == "source":
        files, listing = stage.list_inputs(params)
        return source.source_version(stage, params, root, dataset, [u for _, u in files], dict(listing))
    present, _ = core._present(stage, list(inputs))
    return datasets.derive(present, stage.name, code_of(stage), params, dataset=dataset)


def run_chain(steps: Sequence[Any], src: DatasetRef, params: Any, profile: runtime.Profile,
              runner: Callable[..., DatasetRef] | None = None) -> DatasetRef:
    """Run a recipe section's steps in order, each fed by the outputs it names (``src``: the section's input);
    ``runner(step, inputs, params, profile)`` wraps each step (a Prefect task in flows), default ``run``."""
    runner = runner or (lambda step, inputs, p, prof: run(step, inputs, p, prof))
    refs: dict[str, DatasetRef] = {"src": src}
    for step in steps:
        refs[step.name] = runner(step, [refs[i] for i in step.inputs], params, profile)
    return refs[steps[-1].name]
