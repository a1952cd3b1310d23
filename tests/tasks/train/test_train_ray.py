"""tasks.train.trainer under a real Ray Train TorchTrainer (1 CPU worker, gloo process group): the engine's wrapping."""

import pyarrow as pa
import pytest

from tasks.train.tokenize import PackParams, TokenizeParams, pack_sequences, save_packed, tokenize_docs
from tasks.train.trainer import TrainParams, read_metrics, train

TEXT = [f"Document {i}: the quick brown fox jumps over the lazy dog number {i % 7}." for i in range(200)]


def _loop(config: dict) -> None:
    import ray.train
    import torch.distributed as dist

    assert dist.is_initialized()  # Ray Train set up the process group; train() must wrap the model in DDP
    summary = train(config["params"], config["data_dir"], config["out_dir"], report=None)
    ray.train.report({"final_loss": summary["final_loss"], "steps": summary["steps"]})


def _packed(tmp_path):
    docs = pa.table({"doc_id": [str(i) for i in range(len(TEXT))], "text": TEXT})
    save_packed(pack_sequences(tokenize_docs(docs, TokenizeParams()), PackParams(seq_len=32)),
                tmp_path / "data")  # fmt: skip
    return tmp_path / "data"


@pytest.mark.slow
def test_train_runs_inside_ray_torch_trainer(ray_local, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    _packed(tmp_path)
    tp = TrainParams(max_steps=6, micro_batch_size=4, warmup_steps=2, checkpoint_every=3)
    trainer = TorchTrainer(
        _loop,
        train_loop_config={"params": tp, "data_dir": str(tmp_path / "data"), "out_dir": str(tmp_path / "run")},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=str(tmp_path / "ray"), name="train"),
    )
    result = trainer.fit()
    assert result.error is None
    assert read_metrics(tmp_path / "run")["step"].to_pylist() == list(range(1, 7))
    # the same data + params without Ray give the same curve: DDP with one rank changes nothing
    train(tp, tmp_path / "data", tmp_path / "plain")
    assert read_metrics(tmp_path / "run")["loss"].to_pylist() == pytest.approx(
        read_metrics(tmp_path / "plain")["loss"].to_pylist(), abs=1e-6
    )
    assert (tmp_path / "run" / "hf" / "config.json").is_file()


@pytest.mark.slow
def test_fit_runs_one_worker_as_a_task_and_several_under_torch_trainer_with_ddp(ray_local, tmp_path):
    """The executor's fit: one worker is a plain Ray task (no Ray Train run folder), several are TorchTrainer ranks
    of one DDP process group; both report the loop's numeric summary."""
    from ray_cluster.runtime import Profile, StageResources
    from ray_cluster.train import fit
    from tasks.train.trainer import train_loop

    data = _packed(tmp_path)
    tp = TrainParams(max_steps=4, micro_batch_size=2, warmup_steps=1, checkpoint_every=2)
    one = fit(train_loop, {"params": tp, "data_dir": str(data), "out_dir": str(tmp_path / "one" / "run")},
              StageResources(num_cpus=1), Profile())  # fmt: skip
    assert one["steps"] == 4 and one["tokens_seen"] == 4 * 2 * 32 and "hf_dir" not in one  # numeric only
    assert not (tmp_path / "one" / "ray").exists() and (tmp_path / "one" / "run" / "hf" / "config.json").is_file()
    two = fit(train_loop, {"params": tp, "data_dir": str(data), "out_dir": str(tmp_path / "two" / "run")},
              StageResources(num_cpus=1, concurrency=2), Profile())  # fmt: skip
    # two ranks: each step trains both ranks' micro-batches (tokens_seen counts the global batch)
    assert two["steps"] == 4 and two["tokens_seen"] == 2 * one["tokens_seen"]
    assert (tmp_path / "two" / "ray").is_dir() and (tmp_path / "two" / "run" / "hf" / "config.json").is_file()
