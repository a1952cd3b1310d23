"""Evaluate a saved Hugging Face causal LM (the output of tasks.train).

  * ``heldout_bpb(model_dir, docs, params)``: bits-per-byte and token perplexity per source domain on held-out text.
  * ``harness_eval(model_dir, params)``: multiple-choice / cloze tasks scored by log-likelihood through
    lm-evaluation-harness (``simple_evaluate`` + ``HFLM``), with task configs generated over the LOCAL eval files
    (tasks/eval_tasks), never the hub.

Both return an Arrow table (task, metric, value, stderr, n); the engine adds model / data versions.

    python -c "from tasks.evaluate import *; print(harness_eval('run/hf', EvaluateParams(eval_dir='../shared/data/eval', limit=20)))"
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from tasks.eval_tasks import ALL_TASKS, SPECS, write_task_configs

RESULT_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("stderr", pa.float64()),
        ("n", pa.int64()),
    ]
)


@dataclass(frozen=True, kw_only=True, slots=True)
class EvaluateParams:
    """What to evaluate and how much of it."""

    # The local eval data root (../shared/data/eval): gauntlet/, hellaswag/, mmlu/. Needed by harness_eval only.
    eval_dir: str | None = None
    tasks: tuple[str, ...] = ALL_TASKS  # keys of tasks.eval_tasks.SPECS
    limit: int | None = None  # examples per task (per MMLU subject); None = all
    num_fewshot: int = 0
    batch_size: int = 16
    device: str = "auto"  # "auto": cuda if available else cpu
    # Held-out text: columns and the scoring window (None = the model's max_position_embeddings).
    text_column: str = "text"
    domain_column: str = "domain"
    max_length: int | None = None

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("tasks must not be empty (leave the key out for every task)")
        unknown = [t for t in self.tasks if t not in SPECS]
        if unknown:
            raise ValueError(f"unknown eval tasks {[str(t)[:40] for t in unknown[:5]]}; known: {list(SPECS)}")
        for name in ("limit", "max_length"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (or absent for no limit), got {getattr(self, name)}")
        if self.num_fewshot < 0 or self.batch_size < 1:
            raise ValueError("num_fewshot must be >= 0 and batch_size >= 1")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:i]', got {self.device!r}")


def _device(params: EvaluateParams) -> str:
    if params.device != "auto":
        return params.device
    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------- (a) bits per byte


def _doc_nll(model, ids: list[int], bos: int, window: int, device: str) -> float:
    """Summed NLL (nats) of `ids` given a leading BOS, in non-overlapping windows of `window` predicted tokens."""
    total = 0.0
    for start in range(0, len(ids), window):
        ctx_first = bos if start == 0 else ids[start - 1]  # each window is conditioned on the previous token only
        chunk = [ctx_first, *ids[start : start + window]]
        x = torch.tensor([chunk], device=device)
        with torch.no_grad():
            logits = model(x[:, :-1]).logits.float()
        total += float(F.cross_entropy(logits[0], x[0, 1:], reduction="sum"))
    return total


def _ratio_stderr(num: np.ndarray, den: np.ndarray) -> float | None:
    """Delta-method standard error of sum(num)/sum(den) over documents (ratio estimator)."""
    n = len(num)
    if n < 2 or den.sum() == 0:
        return None
    r = num.sum() / den.sum()
    return float(math.sqrt(n / (n - 1) * ((num - r * den) ** 2).sum()) / den.sum())


def heldout_bpb(model_dir: str | Path, docs: pa.Table, params: EvaluateParams) -> pa.Table:
    """Bits per UTF-8 byte and per-token perplexity per domain (task "heldout/<domain>", plus "heldout/all").

    bits/byte = sum NLL / ln 2 / sum bytes (Gao et al. 2020, The Pile), comparable across tokenizers. Docs with null
    or empty text are not scored and are reported as metric "docs_skipped".
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for c in (params.text_column, params.domain_column):
        if c not in docs.column_names:
            raise KeyError(f"heldout_bpb needs a {c!r} column, got {docs.column_names}")
    device = _device(params)
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True).to(device).eval()
    window = params.max_length or int(model.config.max_position_embeddings)
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    per_domain: dict[str, list[tuple[float, int, int]]] = {}
    skipped: dict[str, int] = {}
    texts = docs.column(params.text_column).to_pylist()
    domains = docs.column(params.domain_column).to_pylist()
    for text, domain in zip(texts, domains, strict=True):
        domain = "__null__" if domain is None else str(domain)
        if not text:
            skipped[domain] = skipped.get(domain, 0) + 1
            continue
        ids = tok(text, add_special_tokens=False)["input_ids"]
        per_domain.setdefault(domain, []).append(
            (_doc_nll(model, ids, bos, window, device), len(ids), len(text.encode()))
        )
    rows = []
    groups = {f"heldout/{d}": v for d, v in sorted(per_domain.items())}
    if len(groups) > 1:
        groups["heldout/all"] = [x for v in per_domain.values() for x in v]
    for task, vals in groups.items():
        nll, ntok, nbytes = (np.array(c, dtype=np.float64) for c in zip(*vals, strict=True))
        se_tok = _ratio_stderr(nll, ntok)
        ppl = math.exp(nll.sum() / ntok.sum())
        se_bpb = _ratio_stderr(nll / math.log(2), nbytes)
        rows.append({"task": task, "metric": "bits_per_byte", "value": nll.sum() / math.log(2) / nbytes.sum(),
                     "stderr": se_bpb, "n": len(vals)})  # fmt: skip
        rows.append({"task": task, "metric": "perplexity", "value": ppl,
                     "stderr": None if se_tok is None else ppl * se_tok, "n": len(vals)})  # fmt: skip
    for domain, k in sorted(skipped.items()):
        rows.append({"task": f"heldout/{domain}", "metric": "docs_skipped", "value": float(k), "stderr": None, "n": k})
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


# ---------------------------------------------------------------- (b) lm-evaluation-harness


def harness_eval(
    model_dir: str | Path, params: EvaluateParams, *, return_samples: bool = False
) -> pa.Table | tuple[pa.Table, pa.Table]:
    """Score the model on the local eval tasks with lm-evaluation-harness; one row per (task, metric).

    With return_samples, also returns the per-request log-likelihoods
    (task, doc_index, request, context, continuation, loglik, is_greedy) for inspection.
    """
    if params.eval_dir is None:
        raise ValueError("EvaluateParams.eval_dir must point at the local eval data (../shared/data/eval)")
    os.environ["HF_DATASETS_OFFLINE"] = "1"  # the task configs read local files; never fall back to the hub
    os.environ["HF_HUB_OFFLINE"] = "1"
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="quarry-eval-tasks-") as task_dir:
        names = write_task_configs(params.eval_dir, task_dir, params.tasks)
        lm = HFLM(pretrained=str(model_dir), device=_device(params), batch_size=params.batch_size, dtype="float32")
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=names,
            num_fewshot=params.num_fewshot,
            limit=params.limit,
            task_manager=TaskManager(include_path=task_dir, include_defaults=False),
            log_samples=return_samples,
            bootstrap_iters=1000,  # only perplexity-type metrics bootstrap; 1000 keeps the stderr cheap
        )
    table = _results_table(out)
    if not return_samples:
        return table
    return table, _samples_table(out)


def _results_table(out: dict) -> pa.Table:
    rows = []
    n_samples = out.get("n-samples", {})
    for task, metrics in {**out.get("results", {}), **out.get("groups", {})}.items():
        n = n_samples.get(task, {}).get("effective")
        if n is None and task in out.get("group_subtasks", {}):
            n = sum(n_samples.get(s, {}).get("effective", 0) for s in out["group_subtasks"][task])
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key or not isinstance(value, int | float):
                continue
            metric = key.split(",")[0]
            stderr = metrics.get(f"{metric}_stderr,{key.split(',', 1)[1]}")
            rows.append(
                {
                    "task": task.removeprefix("quarry_"),
                    "metric": metric,
                    "value": float(value),
                    "stderr": float(stderr) if isinstance(stderr, int | float) else None,
                    "n": n,
                }
            )
    return pa.Table.from_pylist(sorted(rows, key=lambda r: (r["task"], r["metric"])), schema=RESULT_SCHEMA)


def _samples_table(out: dict) -> pa.Table:
    rows = []
    for task, samples in out.get("samples", {}).items():
        for s in samples:
            for j, (args, resp) in enumerate(zip(s["arguments"], s["resps"], strict=True)):
                ll, greedy = resp[0]
                rows.append(
                    {
                        "task": task.removeprefix("quarry_"),
                        "doc_index": int(s["doc_id"]),
                        "request": j,
                        "context": args[0],
                        "continuation": args[1],
                        "loglik": float(ll),
                        "is_greedy": bool(greedy),
                    }
                )
    return pa.Table.from_pylist(rows)


# ---------------------------------------------------------------------------------------------------------------
# the ``evaluate`` stage (kind ``global``)


def evaluate_stage(tables: dict, params: EvaluateParams, ctx) -> tuple[pa.Table, dict]:
    """Bits/byte on the held-out documents (when the recipe holds some out) and the harness tasks, for the model
    of the ``train`` input; every row names the model and the data it was trained on."""
    model_dir = ctx.input_dir("train") / "run" / "hf"
    parts = []
    if "heldout" in tables:
        parts.append(heldout_bpb(model_dir, tables["heldout"], params))
    if params.eval_dir and params.tasks:
        parts.append(harness_eval(model_dir, params))
    table = pa.concat_tables(parts, promote_options="permissive") if parts else pa.table({})
    data_version = next(iter(ctx.input_manifest("train")["parents"]), None)
    n = table.num_rows
    table = table.append_column("model_version", pa.array([ctx.input_ref("train")] * n, pa.string()))
    table = table.append_column("data_version", pa.array([data_version] * n, pa.string()))
    table = table.append_column("dataset", pa.array([ctx.dst.dataset] * n, pa.string()))
    scores = table.select([c for c in ("task", "metric", "value", "stderr", "n") if c in table.column_names])
    return table, {"scores": scores.to_pylist()}


def evaluate_artifact(manifest: dict) -> list[tuple[str, list[dict], str]]:
    return [("eval-results", (manifest.get("stats") or {}).get("scores") or [],
             f"evaluation {manifest['dataset']}/{manifest['stage']}/{manifest['version']}")]
