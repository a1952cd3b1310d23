"""Benchmark: tasks.train.trainer's loop vs a plain single-process torch loop on the same model, data and batch.

The peer is the textbook loop: LlamaForCausalLM(labels=...) + AdamW + grad clipping, batches sliced from the same
packed array in a fixed order, no metrics, no checkpoints. The difference is our orchestration: data-order
bookkeeping, padding masks, per-step metrics, checkpoints, the lr scheduler. Target: < 5 % overhead.
On a GPU both run in bf16 autocast and MFU is printed (PaLM FLOPs formula, tasks.train.lm_model.flops_per_token).

    python benchmarks/train.py                       # CPU, "small" preset, seq 128
    python benchmarks/train.py --preset smollm2_135m --seq-len 1024 --micro-batch 16 --steps 50   # GPU
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.train.lm_model import CausalLMWithMTP, flops_per_token  # noqa: E402
from tasks.train.tokenize import PackParams, TokenizeParams, pack_sequences, save_packed, tokenize_docs  # noqa: E402
from tasks.train.trainer import TrainParams, read_metrics, train  # noqa: E402

SHAKESPEARE = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "clean" / "tinyshakespeare" / "input.txt"
)


def _packed(seq_len: int, out: Path) -> None:
    if SHAKESPEARE.is_file():
        paras = [p for p in SHAKESPEARE.read_text().split("\n\n") if p.strip()]
    else:  # no shared data: synthetic sentences (throughput does not depend on the text)
        paras = [f"Sentence {i} about nothing in particular, repeated for volume." * 5 for i in range(5000)]
    docs = pa.table({"doc_id": [str(i) for i in range(len(paras))], "text": paras})
    p = PackParams(seq_len=seq_len)
    save_packed(pack_sequences(tokenize_docs(docs, TokenizeParams()), p), out)


class _PlainLoop:
    """The peer: one textbook training step per call, timed."""

    def __init__(self, params: TrainParams, data_dir: Path):
        from tasks.train.tokenize import load_packed

        self.data = load_packed(data_dir, mmap=False)
        meta = self.data.meta
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(params.seed)
        self.model = CausalLMWithMTP(params, meta["vocab_size"], meta["seq_len"], meta["eos_id"]).lm.to(self.device)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=params.lr, betas=(params.beta1, params.beta2), fused=self.device.type == "cuda"
        )
        self.order = np.random.default_rng(0).permutation(len(self.data.valid))
        self.params = params
        self.times: list[float] = []

    def step(self) -> None:
        b, s = self.params.micro_batch_size, len(self.times)
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else contextlib.nullcontext()
        t0 = time.perf_counter()
        idx = self.order[(np.arange(b) + s * b) % len(self.order)]
        x = torch.from_numpy(self.data.tokens[idx].astype(np.int64)).to(self.device)
        with amp:
            loss = self.model(input_ids=x[:, :-1], labels=x[:, :-1].clone()).loss  # HF shifts labels itself
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.params.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        loss.item()  # sync, as our loop does when it logs the loss
        self.times.append(time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5, help="steps excluded from the steady-state median")
    ap.add_argument("--checkpoint-every", type=int, default=20)
    ap.add_argument("--packed", type=Path, default=None,
                    help="an already packed token folder (save_packed) instead of tokenizing here, e.g. on a GPU "
                         "machine without the bundled tokenizer")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.packed is not None:
            import shutil

            shutil.copytree(args.packed, tmp / "data")
        else:
            _packed(args.seq_len, tmp / "data")
        params = TrainParams.preset(
            args.preset, max_steps=args.steps, micro_batch_size=args.micro_batch, warmup_steps=5,
            checkpoint_every=args.checkpoint_every,
        )  # fmt: skip
        tokens_per_step = args.micro_batch * args.seq_len

        # Interleave: after each of our steps (timed inside train()), the report hook runs one plain step, so
        # load from other processes on a shared machine hits both loops alike.
        peer = _PlainLoop(params, tmp / "data")
        t0 = time.perf_counter()
        summary = train(params, tmp / "data", tmp / "run", report=lambda row: peer.step())
        plain = peer.times
        ours_wall = time.perf_counter() - t0 - sum(plain)
        m = read_metrics(tmp / "run")
        ours = m["step_time_s"].to_pylist()

        def tps(times):
            return tokens_per_step / statistics.median(times[args.warmup :])

        p_tps, o_tps = tps(plain), tps(ours)
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}"
        print(f"device: {device}   preset: {args.preset}   params: {summary['num_params'] / 1e6:.1f} M")
        print(f"batch: {args.micro_batch} x {args.seq_len} tokens   steps: {args.steps}")
        print(f"{'':28}{'plain torch':>14}{'tasks.train.trainer':>14}")
        print(f"{'tokens/s (median step)':28}{p_tps:14.0f}{o_tps:14.0f}")
        print(
            f"{'step time ms (median)':28}{1e3 * tokens_per_step / p_tps:14.1f}{1e3 * tokens_per_step / o_tps:14.1f}"
        )
        print(f"{'loop wall s (all steps)':28}{sum(plain):14.2f}{sum(ours):14.2f}")
        paired = [o / p for o, p in zip(ours[args.warmup :], plain[args.warmup :], strict=True)]
        print(f"overhead per step: {100 * (p_tps / o_tps - 1):+.1f} % (medians), "
              f"{100 * (statistics.median(paired) - 1):+.1f} % (median of paired steps)   (target < 5 %)")  # fmt: skip
        print(
            f"train() wall incl. model init, {args.steps // args.checkpoint_every} checkpoints, HF export: "
            f"{ours_wall:.2f} s vs {sum(ours):.2f} s in steps"
        )
        if torch.cuda.is_available():
            model = CausalLMWithMTP(params, 49152, args.seq_len, 0)
            peak = TrainParams().peak_flops or 989e12
            fpt = flops_per_token(model, args.seq_len)
            print(f"MFU: plain {p_tps * fpt / peak:.1%}   ours {o_tps * fpt / peak:.1%}   (metrics: {m['mfu'][-1]})")
        print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
