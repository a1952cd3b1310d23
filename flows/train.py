"""Train a small Llama on a curated dataset: tokenize -> pack -> train (Ray Train's TorchTrainer).

    quarry run train datasets_cfg/tiny.yaml
    python -m flows.train datasets_cfg/tiny.yaml

The run directory is the train stage's version folder, so a retried or restarted run resumes from its last
checkpoint with the same data order; per-step metrics become the ``{dataset}__train`` view.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pyarrow as pa
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

import datasets_cfg
import tasks.tokenize as tok_mod
import tasks.train as train_mod
from flows import runinfo
from flows.curate import curate
from flows.runinfo import DEFAULT_RECIPE, ProfileName, Recipe, StorageRoot
from flows.stage import _logger, _publish_table, run_stage
from ray_cluster import runtime
from storage import datasets
from storage.datasets import DatasetRef


def local_dir(ref: DatasetRef) -> Path:
    """Training reads memory-mapped arrays and writes checkpoints: it needs a local or mounted storage root."""
    fs, path = datasets.filesystem(ref.uri)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol not in ("file", "local"):
        raise datasets.StorageError(f"{ref} is on {protocol}://; tokenize/train need a local or mounted storage root")
    return Path(path)


def _pack_work(src: dict, dst: dict, params: tok_mod.TokenizeParams) -> dict:
    tokens = datasets.read_table(DatasetRef(**src))
    packed = tok_mod.pack_sequences(tokens, params)
    ref = DatasetRef(**dst)
    tok_mod.save_packed(packed, local_dir(ref) / "packed")
    datasets.write_shards(ref, packed.counts)  # the per-domain/cluster token counts are the stage's table
    return packed.meta


@task(retries=1, cache_policy=NO_CACHE, task_run_name="pack")
def pack(src: DatasetRef, params: tok_mod.TokenizeParams, profile: runtime.Profile) -> DatasetRef:
    """Pack token ids into fixed-length rows (one global step); counts per domain/cluster go to the catalog."""
    dst = datasets.derive(src, "pack", tok_mod, params)
    if datasets.is_committed(dst):
        return dst
    meta = runtime.run_remote(
        _pack_work, _asdict(src), _asdict(dst), params, resources=profile.resources("pack"), profile=profile
    )
    datasets.commit(dst, parents=[src], params=params, code=datasets.code_hash(tok_mod), extra={"stats": meta})
    _logger().info(f"pack: {meta['tokens_out']} tokens in rows of {meta['seq_len'] + 1} -> {dst.uri}")
    return dst


def _asdict(ref: DatasetRef) -> dict:
    return {"root": ref.root, "dataset": ref.dataset, "stage": ref.stage, "version": ref.version}


def _train_loop(config: dict) -> None:
    """Runs on every Ray Train worker (torch.distributed is set up by TorchTrainer)."""
    import ray.train

    summary = train_mod.train(config["params"], config["data_dir"], config["out_dir"])
    ray.train.report({k: v for k, v in summary.items() if isinstance(v, (int, float))})


def _fit(params: train_mod.TrainParams, data_dir: Path, out_dir: Path, profile: runtime.Profile) -> dict:
    res = profile.resources("train")
    if profile.engine != "ray":
        return train_mod.train(params, data_dir, out_dir)
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"params": params, "data_dir": str(data_dir), "out_dir": str(out_dir)},
        scaling_config=ScalingConfig(
            num_workers=max(1, res.concurrency),
            use_gpu=res.num_gpus > 0,
            resources_per_worker={"CPU": res.num_cpus, **({"GPU": res.num_gpus} if res.num_gpus else {})},
        ),
        # a worker that dies is restarted; train() resumes from the last checkpoint in out_dir
        run_config=RunConfig(storage_path=str(out_dir.parent / "ray"), name="train", failure_config=FailureConfig(max_failures=res.max_retries)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return dict(result.metrics or {})


@task(retries=1, cache_policy=NO_CACHE, task_run_name="train")
def fit(src: DatasetRef, params: train_mod.TrainParams, profile: runtime.Profile) -> DatasetRef:
    """Train (or resume) in the version folder of the train stage; metrics become the stage's table."""
    dst = datasets.derive(src, "train", train_mod, params)
    if datasets.is_committed(dst):
        return dst
    out_dir = local_dir(dst) / "run"
    t0 = time.perf_counter()
    summary = _fit(params, local_dir(src) / "packed", out_dir, profile)
    metrics = train_mod.read_metrics(out_dir)
    metrics = metrics.append_column("model_version", pa.array([str(dst)] * metrics.num_rows))
    datasets.write_shards(dst, metrics)
    stats = {**summary, "seconds": round(time.perf_counter() - t0, 1), "model_dir": str(out_dir / "hf")}
    datasets.commit(dst, parents=[src], params=params, code=datasets.code_hash(train_mod), extra={"stats": stats})
    last = metrics.slice(metrics.num_rows - 1).to_pylist()[0] if metrics.num_rows else {}
    _publish_table("train-summary", [{"model": str(dst), "steps": last.get("step"), "loss": last.get("loss")}], f"training run {dst}")
    _logger().info(f"train: {metrics.num_rows} steps, final loss {last.get('loss')} -> {out_dir / 'hf'}")
    return dst


def model_dir(train_ref: DatasetRef) -> Path:
    return local_dir(train_ref) / "run" / "hf"


def train_on(ref: DatasetRef, cfg: datasets_cfg.RunConfig, profile: runtime.Profile) -> DatasetRef:
    """tokenize -> pack -> train on an already curated version."""
    if cfg.tokenize is None or cfg.train is None:
        raise datasets_cfg.RecipeError(f"recipe for {cfg.dataset} has no `tokenize`/`train` section")
    tokens = run_stage(ref, "tokenize", tok_mod.tokenize_docs, cfg.tokenize, profile)
    packed = pack(tokens, cfg.tokenize, profile)
    return fit(packed, cfg.train, profile)


@flow(name="train", log_prints=True, flow_run_name=runinfo.run_name)
@runinfo.tracked_flow
def train(recipe: Recipe = DEFAULT_RECIPE, profile: ProfileName = None, storage_root: StorageRoot = None) -> str:
    """Curate (a no-op when already done), then tokenize, pack and train; returns the model version."""
    cfg = datasets_cfg.load(recipe)
    profile = runtime.load_profile(cfg.cluster)
    curated = datasets.ref_from_string(cfg.root, curate(recipe))
    with runtime.connected(profile):
        return str(train_on(curated, cfg, profile))


if __name__ == "__main__":
    print(train(sys.argv[1]))
