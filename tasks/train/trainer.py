"""Train a Llama-architecture decoder from random init on packed token rows (the output of tasks.train.tokenize).

Our own loop (nanoGPT/nanochat style): AdamW, warmup + cosine or WSD schedule, gradient clipping and accumulation,
bf16 autocast on CUDA, DDP when torch.distributed is initialised (Ray Train's TorchTrainer does that for the engine).
The data order is a pure function of (seed, position), so a run killed at any point resumes from its last checkpoint
(model + optimizer + scheduler + step + RNG + data position) and replays exactly the same loss curve. Per-step metrics
go to ``out_dir/metrics/*.parquet`` (flushed at each checkpoint, so the metrics always match the checkpointed state)
and to the optional ``report`` callable. The final model is saved in Hugging Face format with its tokenizer in
``out_dir/hf`` for vLLM and lm-evaluation-harness.

    python -c "from tasks.train.trainer import train, TrainParams; print(train(TrainParams(max_steps=30), 'packed/', 'run/'))"

The model and its FLOPs live in tasks/train/lm_model.py: this module imports torch only inside the functions that train,
so the registry (imported by every Ray worker) does not pay for torch.

Size: the loop, its checkpoints (resume with the same data order) and the MFU accounting share state; apart they
would have to re-derive each other's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.common.progress import Ticker
from tasks.common.stage import implements
from tasks.common.tempfiles import clean_abandoned, tmp_path
from tasks.train.config import MODEL_PRESETS, TrainParams  # noqa: F401 (the trainer's params, re-exported)
from tasks.train.tokenize import load_packed, tokenizer_dir

if TYPE_CHECKING:  # annotations only: torch is imported where a model is built
    import torch
    from torch import nn

    from tasks.train.lm_model import CausalLMWithMTP

# Dense bf16 peak FLOP/s per GPU, from the vendor data sheets (H100/H200 SXM: 989 TFLOPS, A100: 312 TFLOPS).
_PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


LIVE_METRICS = "live.parquet"  # in the run folder, beside metrics/: the steps not yet flushed with a checkpoint


def _lr_factor(step: int, p: TrainParams) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based)."""
    if step < p.warmup_steps:
        return (step + 1) / p.warmup_steps
    if p.schedule == "cosine":
        progress = min(
            1.0, (step + 1 - p.warmup_steps) / max(1, p.max_steps - p.warmup_steps)
        )  # floor at the last step
        return p.min_lr_ratio + (1 - p.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_start = p.max_steps - int(p.wsd_decay_fraction * p.max_steps)
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step + 1 - decay_start) / max(1, p.max_steps - decay_start))
    return 1.0 - (1 - p.min_lr_ratio) * progress  # linear cooldown (Hägele et al. 2024)


def _optimizer(model: nn.Module, p: TrainParams, fused: bool) -> torch.optim.AdamW:
    import torch

    # No weight decay on norms/biases (1-D tensors), as nanoGPT / Llama.
    decay = [t for t in model.parameters() if t.requires_grad and t.dim() >= 2]
    no_decay = [t for t in model.parameters() if t.requires_grad and t.dim() < 2]
    groups = [{"params": decay, "weight_decay": p.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=p.lr, betas=(p.beta1, p.beta2), eps=p.eps, fused=fused)


# ---------------------------------------------------------------- data order


class _DataOrder:
    """Row index of global sample position p: epoch e = p // n is a seeded permutation, phase-major.

    Phase 0 rows come before phase 1 (the end-of-training upsampling rows of tasks.train.tokenize), each shuffled.
    """

    def __init__(self, phase: np.ndarray, seed: int):
        self.phase = np.asarray(phase)
        self.n = len(self.phase)
        self.seed = seed
        self._cache: dict[int, np.ndarray] = {}

    def epoch(self, e: int) -> np.ndarray:
        if e not in self._cache:
            rng = np.random.default_rng([self.seed, e])
            parts = [rng.permutation(np.flatnonzero(self.phase == ph)) for ph in np.unique(self.phase)]
            self._cache = {e: np.concatenate(parts)}  # keep one epoch: positions only move forward
        return self._cache[e]

    def rows(self, start: int, count: int) -> np.ndarray:
        return np.array([self.epoch(p // self.n)[p % self.n] for p in range(start, start + count)], dtype=np.int64)


# ---------------------------------------------------------------- checkpoints and metrics


def _latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = sorted(ckpt_dir.glob("step-*.pt"))
    return found[-1] if found else None


def _save_checkpoint(ckpt_dir: Path, state: dict, keep: int) -> Path:
    import torch

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step-{state['step']:08d}.pt"
    tmp = tmp_path(path)
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a checkpoint file either is complete or does not exist
    for old in sorted(ckpt_dir.glob("step-*.pt"))[:-keep]:
        old.unlink()
    return path


def _flush_metrics(metrics_dir: Path, rows: list[dict]) -> None:
    if not rows:
        return
    metrics_dir.mkdir(parents=True, exist_ok=True)
    path = metrics_dir / f"steps-{rows[0]['step']:08d}-{rows[-1]['step']:08d}.parquet"
    tmp = tmp_path(path)
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, path)
    rows.clear()


def _trim_metrics(metrics_dir: Path, last_step: int) -> None:
    """Drop metric files past the checkpoint we resume from (those steps are replayed)."""
    clean_abandoned(metrics_dir)
    for f in metrics_dir.glob("steps-*.parquet"):
        if int(f.stem.split("-")[2]) > last_step:
            f.unlink()


def _write_live(out: Path, rows: list[dict]) -> None:
    """``live.parquet``: the steps since the last metrics flush (none: removed). With ``metrics/`` it is the whole
    curve so far, which a dashboard reads while the run is in flight (``read_metrics(out, live=True)``)."""
    path = out / LIVE_METRICS
    if not rows:
        path.unlink(missing_ok=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one


def read_metrics(out_dir: str | Path, live: bool = False) -> pa.Table:
    """All per-step metrics of a run, sorted by step."""
    files = sorted((Path(out_dir) / "metrics").glob("steps-*.parquet"))
    if live and (Path(out_dir) / LIVE_METRICS).exists():
        files.append(Path(out_dir) / LIVE_METRICS)
    if not files:
        raise FileNotFoundError(f"no metrics under {out_dir}/metrics")
    return pa.concat_tables(pq.read_table(f) for f in files).sort_by("step")


def _rng_state() -> dict:
    import torch

    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- the loop


def _peak_flops(p: TrainParams, device: torch.device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    if p.peak_flops:
        return p.peak_flops
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in _PEAK_BF16_FLOPS.items() if k in name), None)


def train(
    params: TrainParams,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    world_rank: int = 0,
    world_size: int = 1,
    report: Callable[[dict], None] | None = None,
) -> dict:
    """Train (or resume) to params.max_steps; returns a summary dict. Rank 0 writes metrics/checkpoints/the model.

    Under torch.distributed (e.g. inside Ray Train's TorchTrainer) rank and world size come from the process group
    and the model is wrapped in DDP; every rank must see the same data_dir and out_dir (shared storage).
    """
    import torch
    from torch import nn

    from tasks.train.lm_model import CausalLMWithMTP, flops_per_token

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed:
        world_rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    elif world_size != 1:
        raise ValueError("world_size > 1 needs an initialised torch.distributed process group")
    out = Path(out_dir)
    ckpt_dir, metrics_dir = out / "checkpoints", out / "metrics"
    is_main = world_rank == 0

    data = load_packed(data_dir)
    meta = data.meta
    seq_len = int(meta["seq_len"])
    order = _DataOrder(data.phase, params.seed)
    if len(data.valid) == 0:
        raise ValueError(f"{data_dir} holds no token rows")

    if torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    use_bf16 = device.type == "cuda" and params.precision == "auto"
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else (lambda: contextlib.nullcontext())
    )

    torch.manual_seed(params.seed)  # identical init on every rank
    model = CausalLMWithMTP(params, int(meta["vocab_size"]), seq_len, int(meta["eos_id"])).to(device)
    optimizer = _optimizer(model, params, fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, params))

    step, resumed_from = 0, None
    last_loss = float("nan")
    if ckpt_dir.is_dir():
        clean_abandoned(ckpt_dir)
    latest = _latest_checkpoint(ckpt_dir)
    if latest is not None:
        state = torch.load(latest, map_location=device, weights_only=False)  # our own file: holds numpy RNG state
        if state["params"] != dataclasses.asdict(params):
            raise ValueError(f"{latest} was written with different TrainParams; use a new out_dir")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        step, resumed_from = int(state["step"]), str(latest)
        if is_main:
            _trim_metrics(metrics_dir, step)
            with contextlib.suppress(FileNotFoundError):
                last_loss = read_metrics(out)["loss"][-1].as_py()  # a finished run re-called reports its loss
    elif is_main:  # killed before its first checkpoint: every step is replayed, so what that run left goes
        _trim_metrics(metrics_dir, 0)

    ddp = None
    if distributed:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.index is not None else None
        )
    runner = ddp if ddp is not None else model
    global_rows = params.micro_batch_size * params.grad_accum_steps * world_size
    fpt = flops_per_token(model, seq_len)
    peak = _peak_flops(params, device)
    tokens_np = data.tokens
    pending: list[dict] = []

    def checkpoint() -> None:
        if is_main:
            _flush_metrics(metrics_dir, pending)  # metrics first: a checkpoint never lacks its metrics
            state = {
                "step": step,
                "data_position": step * global_rows,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(),
                "params": dataclasses.asdict(params),
            }
            _save_checkpoint(ckpt_dir, state, params.keep_checkpoints)
        if distributed:
            torch.distributed.barrier()

    model.train()
    ticker, first_step = Ticker(), step
    if is_main:
        _write_live(out, [])  # a resumed run's live rows past its checkpoint are replayed, not kept
    while step < params.max_steps:
        t0 = time.perf_counter()
        base = step * global_rows
        batches = []
        for a in range(params.grad_accum_steps):
            idx = order.rows(base + (a * world_size + world_rank) * params.micro_batch_size, params.micro_batch_size)
            rows = torch.from_numpy(tokens_np[idx].astype(np.int64)).to(device, non_blocking=True)
            batches.append((rows, torch.from_numpy(data.valid[idx].astype(np.int64)).to(device)))
        # Normalise by the real targets of the whole step (all ranks), so accumulation == one big batch.
        n_targets = torch.tensor(float(sum(int((v - 1).clamp(min=0).sum()) for _, v in batches)), device=device)
        if distributed:
            torch.distributed.all_reduce(n_targets)
        norm = n_targets.clamp(min=1) / world_size  # DDP averages gradients over ranks
        sums = torch.zeros(2, device=device)
        for a, (rows, valid) in enumerate(batches):
            sync = a == len(batches) - 1
            ctx = ddp.no_sync() if distributed and not sync else contextlib.nullcontext()
            with ctx, autocast():
                loss, main, mtp = runner(rows, valid)
            (loss / norm).backward()
            sums += torch.stack([main, mtp])
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip or float("inf"))
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if distributed:
            torch.distributed.all_reduce(sums)
        sums = (sums / n_targets.clamp(min=1)).tolist()  # .tolist() syncs the device: the step time is honest
        dt = time.perf_counter() - t0
        step += 1
        last_loss = sums[0]
        tps = global_rows * seq_len / dt
        row = {
            "step": step,
            "loss": sums[0],
            "mtp_loss": sums[1] if params.mtp_heads else None,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens": int(n_targets.item()),
            "tokens_per_s": tps,
            "step_time_s": dt,
            "mfu": (tps * fpt / (peak * world_size)) if peak else None,
            "epoch": base // order.n,
        }
        if is_main:
            pending.append(row)
        if report is not None:
            report(row)
        boundary = step % params.checkpoint_every == 0 or step == params.max_steps
        if boundary:
            checkpoint()
        # a line every ~10 s and at each checkpoint (the console, a Ray Job's log, Prefect's run log); the live curve
        # (metrics/ + live.parquet) follows it, so the dashboard shows the loss while the run is in flight
        if is_main and ticker.line(
            f"train: step {step}/{params.max_steps}, loss {sums[0]:.4f}, {tps:,.0f} tokens/s, "
            f"{ticker.elapsed():.0f} s elapsed{ticker.eta(step - first_step, params.max_steps - first_step)}",
            force=boundary,
        ):
            _write_live(out, pending)

    hf_dir = out / "hf"
    if is_main:
        _flush_metrics(metrics_dir, pending)
        export_hf(model, meta, hf_dir)
    if distributed:
        torch.distributed.barrier()
    return {
        "steps": step,
        "final_loss": last_loss,
        "resumed_from": resumed_from,
        "hf_dir": str(hf_dir),
        "metrics_dir": str(metrics_dir),
        "checkpoint": str(_latest_checkpoint(ckpt_dir)),
        "tokens_seen": step * global_rows * seq_len,
        "num_params": sum(t.numel() for t in model.lm.parameters()),
        "flops_per_token": fpt,
    }


def export_hf(model: CausalLMWithMTP, meta: dict, hf_dir: Path) -> None:
    """Save the next-token model (MTP heads dropped) and the tokenizer in Hugging Face format."""
    hf_dir.mkdir(parents=True, exist_ok=True)
    model.lm.save_pretrained(str(hf_dir))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir(meta["tokenizer"])), local_files_only=True)  # a fresh copy
    eos = tok.convert_ids_to_tokens(int(meta["eos_id"]))
    tok.eos_token = tok.bos_token = tok.pad_token = eos  # lm-eval / vLLM read these from the tokenizer files
    tok.model_max_length = int(meta["seq_len"])
    tok.save_pretrained(str(hf_dir))


# ---------------------------------------------------------------------------------------------------------------
# the ``train`` stage (kind ``global``, in the driver: it launches the training workers through the executor)


def train_loop(config: dict) -> dict:
    """What every training worker runs (with several workers, Ray Train sets up torch.distributed around it)."""
    return train(config["params"], config["data_dir"], config["out_dir"])


@implements("train")
def train_stage(tables: dict, params: TrainParams, ctx) -> tuple[pa.Table, dict]:
    """Train (or resume) in the version folder; the per-step metrics are the stage's table."""
    out_dir = ctx.local_dir / "run"
    summary = ctx.distributed(train_loop, {"params": params, "data_dir": str(ctx.input_dir("pack") / "packed"),
                                           "out_dir": str(out_dir)})
    metrics = read_metrics(out_dir)
    metrics = metrics.append_column("model_version", pa.array([str(ctx.dst)] * metrics.num_rows, pa.string()))
    return metrics, {**summary, "model_dir": str(out_dir / "hf")}


def train_artifact(manifest: dict) -> list[tuple[str, list[dict], str]]:
    s = manifest.get("stats") or {}
    ref = f"{manifest['dataset']}/{manifest['stage']}/{manifest['version']}"
    return [("train-summary", [{"model": ref, "steps": s.get("steps"), "loss": s.get("final_loss", s.get("loss"))}],
             f"training run {ref}")]
