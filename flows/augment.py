"""Thinking-augmented data (TPT, Wang et al. 2025): a teacher LLM writes a thinking trajectory for each curated
document; the training text becomes ``document <think> thinking </think>``.

    quarry run augment datasets_cfg/tiny.yaml
    python -m flows.augment datasets_cfg/tiny.yaml

Backends: ``local`` (bundled SmolLM2-135M on CPU), ``openai`` (any OpenAI-compatible endpoint), ``vllm`` (Ray
Data's LLM processor on GPU workers). A re-run reuses every document already augmented with the same (teacher,
template, params) by any earlier augment version of the dataset; a killed run resumes from committed shards.
"""

from __future__ import annotations

import sys
import time

import pyarrow as pa
import pyarrow.compute as pc
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

import datasets_cfg
import tasks.augment as aug_mod
from flows import runinfo
from flows.runinfo import DEFAULT_RECIPE, ProfileName, Recipe, StorageRoot
from flows.stage import _logger, _publish_table, map_stage
from ray_cluster import runtime
from storage import datasets
from storage.datasets import DatasetRef


def _previous_rows(root: str, dataset: str) -> pa.Table | None:
    """Successful rows of every committed augment version of the dataset (the reuse pool, keyed by aug_key)."""
    tables = []
    for m in datasets.iter_manifests(root):
        if m["dataset"] == dataset and m["stage"] == "augment":
            t = datasets.read_table(DatasetRef(root, dataset, "augment", m["version"]))
            if "aug_error" in t.column_names:
                tables.append(t.filter(pc.is_null(t.column("aug_error"))))
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


class ReusingAugmenter:
    """The Augmenter actor, plus reuse: rows whose aug_key an earlier version already produced are copied over."""

    def __init__(self, params: aug_mod.AugmentParams, previous: dict | None = None):
        self.params = params
        self.inner = None  # the model loads only when some document really needs generating
        self.previous = _previous_rows(previous["root"], previous["dataset"]) if previous else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        todo = aug_mod.pending_docs(batch, self.previous, self.params)
        parts = []
        if todo.num_rows:
            if self.inner is None:
                self.inner = aug_mod.Augmenter(self.params)
            parts.append(self.inner(todo))
        if todo.num_rows < batch.num_rows:
            keys = aug_mod.aug_keys(batch, self.params)
            done_keys = pc.is_in(keys, value_set=self.previous.column("aug_key").combine_chunks())
            reused = self.previous.filter(
                pc.is_in(self.previous.column("aug_key"), value_set=pc.filter(keys, done_keys))
            )
            # exactly one reused row per key, in the batch's order
            parts.append(reused.take(pc.index_in(pc.filter(keys, done_keys), value_set=reused.column("aug_key"))))
        return pa.concat_tables(parts, promote_options="permissive")


def _reusing_augmenter(params: aug_mod.AugmentParams, previous: dict | None) -> ReusingAugmenter:
    return ReusingAugmenter(params, previous)


@task(retries=1, cache_policy=NO_CACHE, task_run_name="augment")
def augment_stage(src: DatasetRef, params: aug_mod.AugmentParams, profile: runtime.Profile) -> DatasetRef:
    """Generate (or reuse) one thinking trajectory per document; records cost in the manifest and an artifact."""
    t0 = time.perf_counter()
    if params.backend == "vllm":
        return _vllm_stage(src, params, profile, t0)
    import functools

    setup_cls = functools.partial(_reusing_augmenter, previous={"root": src.root, "dataset": src.dataset})

    def cost(dst: DatasetRef) -> dict:  # before the commit, so the manifest carries it
        rows = datasets.read_table_uncommitted(dst)
        c = aug_mod.augment_cost(rows, elapsed_s=time.perf_counter() - t0, num_gpus=profile.resources("augment").num_gpus or 0.0)
        failed = rows.filter(pc.is_valid(rows.column("aug_error"))).num_rows
        _publish_table("augment-cost", [c], f"TPT generation cost of {dst}")
        _logger().info(f"augment: {rows.num_rows} docs, {failed} failed (kept with aug_error), cost {c}")
        return {"cost": c, "failed": failed}

    return map_stage(src, "augment", setup_cls, params, profile, stateful=True, code=(ReusingAugmenter, aug_mod), stats_fn=cost)


def _vllm_stage(src: DatasetRef, params: aug_mod.AugmentParams, profile: runtime.Profile, t0: float) -> DatasetRef:
    """GPU clusters: each pending shard goes through vLLM engine replicas (Ray Data LLM processor), then is written
    under its own name, so a killed run resumes shard by shard like every other stage."""
    import functools
    import posixpath

    import ray.data

    from ray_cluster.llm import vllm_map

    dst = datasets.derive(src, "augment", (ReusingAugmenter, aug_mod), params)
    if datasets.is_committed(dst):
        return dst
    res = profile.resources("augment")
    done = datasets.existing_shards(dst)
    for uri in datasets.files(src):
        name = posixpath.basename(uri)
        if name in done:
            continue
        out = vllm_map(
            ray.data.read_parquet(uri),
            model_source=params.model,
            preprocess=functools.partial(aug_mod.vllm_preprocess, params=params),
            postprocess=functools.partial(aug_mod.vllm_postprocess, params=params),
            engine_kwargs={"max_model_len": params.max_input_tokens + 256 + params.max_new_tokens},
            concurrency=max(1, res.concurrency),
            batch_size=res.batch_size,
        )
        datasets.write_shard(dst, name, pa.Table.from_pylist(out.take_all()))
    rows = datasets.read_table_uncommitted(dst)
    cost = aug_mod.augment_cost(rows, elapsed_s=time.perf_counter() - t0, num_gpus=(res.num_gpus or 1) * max(1, res.concurrency))
    datasets.commit(dst, parents=[src], params=params, code=datasets.code_hash((ReusingAugmenter, aug_mod)), extra={"stats": {"cost": cost}})
    _publish_table("augment-cost", [cost], f"TPT generation cost of {dst}")
    return dst


@flow(name="augment", log_prints=True, flow_run_name=runinfo.run_name)
@runinfo.tracked_flow
def augment(recipe: Recipe = DEFAULT_RECIPE, profile: ProfileName = None, storage_root: StorageRoot = None) -> str:
    """Curate (a no-op when done), then augment the curated documents; returns the augment version."""
    from flows.curate import curate_stages

    cfg = datasets_cfg.load(recipe)
    if cfg.augment is None:
        raise datasets_cfg.RecipeError(f"recipe {recipe} has no `augment` section")
    profile = runtime.load_profile(cfg.cluster)
    with runtime.connected(profile):
        curated, _ = curate_stages(cfg, profile)
        return str(augment_stage(curated, cfg.augment, profile))


if __name__ == "__main__":
    print(augment(sys.argv[1]))
