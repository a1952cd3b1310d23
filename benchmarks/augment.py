"""Benchmark the augment stage's teacher throughput: local backend at batch sizes 1, 8, 32 (+ vLLM on a GPU).

The peer is the naive way to run a teacher: transformers `generate` one document at a time (batch 1). Each batch size
runs the full Augmenter (truncation, chat template, left-padded batched generation, parsing) on the same C4 docs and
prints generated tokens/s, its ratio to batch 1, docs/s, input MB/s per core, peak RSS, and the cost figure the stage
records (device-hours per 1B training tokens; the TPT paper's reference is ~200 A100-hours per 1B).

    python benchmarks/augment.py                      # 32 docs, 32 new tokens, batch sizes 1 8 32, 1 torch thread
    python benchmarks/augment.py --docs 64 --max-new-tokens 64 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pyarrow as pa  # noqa: E402

from tasks.augment import Augmenter, AugmentParams, augment_cost  # noqa: E402

C4 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "web" / "c4_sample" / "c4_sample.jsonl"


def _docs(n: int) -> pa.Table:
    texts = [json.loads(line)["text"] for _, line in zip(range(n), C4.open(encoding="utf-8"), strict=False)]
    return pa.table({"doc_id": [f"c4-{i}" for i in range(len(texts))], "text": texts})


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _bench_local(docs: pa.Table, args) -> list[dict]:
    results = []
    aug = None
    for bs in args.batch_sizes:
        params = AugmentParams(
            max_new_tokens=args.max_new_tokens,
            max_input_tokens=args.max_input_tokens,
            batch_size=bs,
            num_threads=args.threads,
        )
        if aug is None:
            aug = Augmenter(params)  # load once; only the batch size changes between runs
        else:
            aug.params = params
            aug.backend.batch_size = bs
        t0 = time.perf_counter()
        out = aug(docs)
        elapsed = time.perf_counter() - t0
        cost = augment_cost(out, elapsed_s=elapsed, num_gpus=1)
        results.append({"engine": f"local bs={bs}", "out": out, "elapsed": elapsed, "cost": cost})
        print(f"  measured local bs={bs}: {cost['tokens_per_s']:.1f} tok/s in {elapsed:.1f} s", flush=True)
    return results


def _bench_vllm(docs: pa.Table, args) -> list[dict]:
    """vLLM offline engine on the same prompts (only with a CUDA GPU and vllm installed)."""
    try:
        import torch
        import vllm
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    from tasks.augment import vllm_postprocess, vllm_preprocess

    params = AugmentParams(backend="vllm", model=args.vllm_model, max_new_tokens=args.max_new_tokens,
                           max_input_tokens=args.max_input_tokens)  # fmt: skip
    llm = vllm.LLM(model=args.vllm_model, gpu_memory_utilization=0.8, seed=0)
    rows = [vllm_preprocess(r, params) for r in docs.to_pylist()]
    t0 = time.perf_counter()
    outs = llm.chat([r["messages"] for r in rows], [vllm.SamplingParams(**r["sampling_params"]) for r in rows])
    elapsed = time.perf_counter() - t0
    post = [
        vllm_postprocess(
            r
            | {
                "generated_text": o.outputs[0].text,
                "num_input_tokens": len(o.prompt_token_ids),
                "num_generated_tokens": len(o.outputs[0].token_ids),
                "time_taken_llm": elapsed,
            },
            params,
        )  # fmt: skip
        for r, o in zip(rows, outs, strict=True)
    ]
    out = pa.Table.from_pylist(post)
    return [{"engine": f"vllm {args.vllm_model}", "out": out, "elapsed": elapsed,
             "cost": augment_cost(out, elapsed_s=elapsed, num_gpus=1)}]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=32, help="C4 documents to augment per run")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--max-input-tokens", type=int, default=512, help="truncation budget (the paper's is 2048)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads = cores used")
    ap.add_argument("--vllm-model", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="HF id or path for vLLM")
    args = ap.parse_args()
    if not C4.is_file():
        raise SystemExit(f"shared data not found at {C4}")
    docs = _docs(args.docs)
    mb = sum(len(t.encode()) for t in docs.column("text").to_pylist()) / 1e6
    results = _bench_local(docs, args) + _bench_vllm(docs, args)
    base = results[0]["cost"]["tokens_per_s"]
    print(f"{args.docs} C4 docs ({mb:.2f} MB), max_new_tokens={args.max_new_tokens}, "
          f"max_input_tokens={args.max_input_tokens}, torch threads={args.threads}")  # fmt: skip
    head = (f"{'engine':<38} {'gen tok':>8} {'tok/s':>8} {'vs bs=1':>8} {'docs/s':>7} {'MB/s/core':>9} "
            f"{'stop/len/err':>12} {'dev-h per 1B':>13}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for r in results:
        c = r["cost"]
        cores = args.threads if r["engine"].startswith("local") else 1
        print(
            f"{r['engine']:<38} {c['generated_tokens']:>8} {c['tokens_per_s']:>8.1f} {c['tokens_per_s'] / base:>7.2f}x "
            f"{c['docs'] / r['elapsed']:>7.2f} {mb / r['elapsed'] / cores:>9.4f} "
            f"{c['finish_stop']:>4}/{c['finish_length']}/{c['finish_error']:<4} "
            f"{c['gpu_hours_per_1b_train_tokens']:>13.0f}"
        )
    print(f"peak RSS {_peak_rss_mb():.0f} MB (process, all runs); TPT paper reference: ~200 A100-hours per 1B tokens")


if __name__ == "__main__":
    main()
