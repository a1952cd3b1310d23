"""Generation cost of an augment run (tokens, tokens/s, accelerator-hours per 1B training tokens), recorded in the
manifest's stats and published as the `augment-cost` artifact."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from tasks.augment.params import AugmentParams, devices_per_replica


def augment_cost(rows: pa.Table, *, elapsed_s: float, num_gpus: float = 1.0) -> dict:
    """Generation cost of an augment run from its output rows.

    elapsed_s is the wall time of the generation and num_gpus the accelerators busy during it (CPU runs: pass the
    number of CPU workers; the figure is then "device-hours"). Formula:

        train_tokens      = sum over successful rows of (aug_document_tokens + aug_completion_tokens)
        tokens_per_s      = generated_tokens / elapsed_s                 (all rows, failures included)
        gpu_hours_per_1b  = num_gpus * elapsed_s / 3600 / (train_tokens / 1e9)

    Reference point: TPT reports ~20k A100-hours per 100B training tokens, i.e. ~200 GPU-hours per 1B.
    Training tokens are counted with the teacher's tokenizer (the student's differs by a few percent).
    """
    ok = pc.is_null(rows.column("aug_error"))
    gen = pc.sum(pc.fill_null(rows.column("aug_completion_tokens"), 0)).as_py() or 0
    prompt = pc.sum(pc.fill_null(rows.column("aug_prompt_tokens"), 0)).as_py() or 0
    good = rows.filter(ok)
    train = (pc.sum(pc.fill_null(good.column("aug_document_tokens"), 0)).as_py() or 0) + (
        pc.sum(pc.fill_null(good.column("aug_completion_tokens"), 0)).as_py() or 0
    )
    reasons = rows.column("aug_finish_reason").to_pylist()
    return {
        "docs": rows.num_rows,
        "docs_ok": good.num_rows,
        "docs_failed": rows.num_rows - good.num_rows,
        "finish_stop": reasons.count("stop"),
        "finish_length": reasons.count("length"),
        "finish_error": reasons.count("error"),
        "prompt_tokens": int(prompt),
        "generated_tokens": int(gen),
        "train_tokens": int(train),
        "elapsed_s": float(elapsed_s),
        "num_gpus": float(num_gpus),
        "tokens_per_s": gen / elapsed_s if elapsed_s > 0 else None,
        "gpu_hours_per_1b_train_tokens": (num_gpus * elapsed_s / 3600) / (train / 1e9) if train else None,
    }


def augment_summary(read, elapsed: float, resources, params: AugmentParams) -> dict:
    """Cost of the run and failed rows (kept with aug_error), in the manifest's stats."""
    rows = read(None)
    # a replica of a tensor/pipeline-parallel teacher holds several GPUs: each of them is busy for the whole run
    devices = (resources.num_gpus or 0.0) * max(1, resources.concurrency) * devices_per_replica(params)
    failed = rows.filter(pc.is_valid(rows.column("aug_error"))).num_rows
    return {"cost": augment_cost(rows, elapsed_s=elapsed, num_gpus=devices), "failed": failed}


def augment_artifact(manifest: dict) -> list[tuple[str, list[dict], str]]:
    """The run's cost as a published artifact, so generation spend is comparable across versions."""
    cost = (manifest.get("stats") or {}).get("cost")
    ref = f"{manifest['dataset']}/{manifest['stage']}/{manifest['version']}"
    return [("augment-cost", [cost], f"TPT generation cost of {ref}")] if cost else []
