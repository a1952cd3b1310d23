"""Distributed training on the profile's workers: Ray Train's ``TorchTrainer`` runs a loop function on every worker
(torch.distributed is set up by it); off Ray (serial/Dask profiles) the loop runs in-process. Knows no stage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ray_cluster import runtime


def _worker_loop(config: dict) -> None:
    """Runs on every Ray Train worker: the stage's loop, then its numeric summary reported to the driver."""
    import ray.train

    summary = config["loop"](config["config"])
    ray.train.report({k: v for k, v in summary.items() if isinstance(v, (int, float))})


def fit(loop: Callable[[dict], dict], config: dict, res: runtime.StageResources, profile: runtime.Profile) -> dict:
    """``loop(config) -> summary``; a worker that dies is restarted and the loop resumes from its own checkpoints."""
    if profile.engine != "ray":
        return loop(config)
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out_dir = Path(config["out_dir"])
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"loop": loop, "config": config},
        scaling_config=ScalingConfig(
            num_workers=max(1, res.concurrency),
            use_gpu=res.num_gpus > 0,
            resources_per_worker={"CPU": res.num_cpus, **({"GPU": res.num_gpus} if res.num_gpus else {})},
        ),
        run_config=RunConfig(storage_path=str(out_dir.parent / "ray"), name="run",
                             failure_config=FailureConfig(max_failures=res.max_retries)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return dict(result.metrics or {})
