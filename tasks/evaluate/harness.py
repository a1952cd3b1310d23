"""Evaluate a saved Hugging Face causal LM (the output of tasks.train.trainer).

  * ``heldout_bpb(model_dir, docs, params)``: bits-per-byte and token perplexity per source domain on held-out text.
  * ``harness_eval(model_dir, params)``: multiple-choice / cloze tasks scored by log-likelihood through
    lm-evaluation-harness (``simple_evaluate`` + ``HFLM``), with task configs generated over the LOCAL eval files
    (tasks/common/eval_sets), never the hub.

Both return an Arrow table (task, metric, value, stderr, n, then the provenance columns of PROVENANCE: harness
version, task-config and eval-file hashes, num_fewshot, few-shot seed, batch size, dtype, device; Biderman et al.
2024, "Lessons from the trenches on reproducible evaluation of language models", sec. 4, list these as what a score
needs to be reproduced). ``evaluate_stage`` also writes every example's score (``evaluate_examples``: what the
experiment's bootstrap and paired tests resample) and the DCLM centered-accuracy aggregate (tasks/evaluate/compare.py).

    python -c "from tasks.evaluate.harness import *; print(harness_eval('run/hf', EvaluateParams(eval_dir='../shared/data/eval', limit=20)))"
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from tasks.common.eval_sets import ALL_TASKS, SPECS, eval_file_hash, task_config_hash, write_task_configs
from tasks.common.progress import Ticker
from tasks.common.stage import implements
from tasks.evaluate import truncation
from tasks.evaluate.compare import CENTERED_METRIC, CENTERED_TASK, EXAMPLE_SCHEMA, centered_rows

PROVENANCE = pa.schema(
    [
        ("harness_version", pa.string()),  # "lm_eval==0.4.x", or our held-out scorer's version
        ("task_config_hash", pa.string()),  # sha256 of the generated task YAML(s) + prompt functions
        ("eval_file_hash", pa.string()),  # sha256 of the eval file(s) (held out: of the scored documents' text)
        ("num_fewshot", pa.int64()),
        ("fewshot_seed", pa.int64()),
        ("batch_size", pa.int64()),
        ("dtype", pa.string()),
        ("device", pa.string()),
    ]
)
RESULT_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("stderr", pa.float64()),
        ("n", pa.int64()),
        ("n_truncated", pa.int64()),  # examples scored on a left-truncated prompt (tasks/evaluate/truncation.py)
        *PROVENANCE,
    ]
)
_HELDOUT_SCORER = "quarry.heldout_bpb/1"  # bump when the held-out scoring changes


@dataclass(frozen=True, kw_only=True, slots=True)
class EvaluateParams:
    """What to evaluate and how much of it."""

    # The local eval data root (../shared/data/eval): gauntlet/, hellaswag/, mmlu/. Needed by harness_eval only.
    eval_dir: str | None = None
    tasks: tuple[str, ...] = ALL_TASKS  # keys of tasks.common.eval_sets.SPECS
    limit: int | None = None  # examples per task (per MMLU subject); None = all
    num_fewshot: int = 0
    fewshot_seed: int = 1234  # the seed of lm-eval's few-shot sampler (its default, stated so every row records it)
    batch_size: int = 16
    device: str = "auto"  # "auto": cuda if available else cpu
    dtype: str = "float32"  # the model's weights and activations while scoring
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
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {str(self.dtype)[:40]!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:i]', got {self.device!r}")


def _device(params: EvaluateParams) -> str:
    import torch

    if params.device != "auto":
        return params.device
    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------- (a) bits per byte


def _doc_nll(model, ids: list[int], bos: int, window: int, device: str) -> float:
    """Summed NLL (nats) of `ids` given a leading BOS, in non-overlapping windows of `window` predicted tokens."""
    import torch
    import torch.nn.functional as F

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


def heldout_bpb(model_dir: str | Path, docs: pa.Table, params: EvaluateParams, *,
                return_examples: bool = False) -> pa.Table | tuple[pa.Table, pa.Table]:
    """Bits per UTF-8 byte and per-token perplexity per domain (task "heldout/<domain>", plus "heldout/all").

    bits/byte = sum NLL / ln 2 / sum bytes (Gao et al. 2020, The Pile), comparable across tokenizers. Docs with null
    or empty text are not scored and are reported as metric "docs_skipped". With return_examples, also each
    document's bits/byte (weight: its bytes) per task, keyed by ``doc_id`` (else its row number).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for c in (params.text_column, params.domain_column):
        if c not in docs.column_names:
            raise KeyError(f"heldout_bpb needs a {c!r} column, got {docs.column_names}")
    device = _device(params)
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True,
                                                 dtype=getattr(torch, params.dtype)).to(device).eval()
    window = params.max_length or int(model.config.max_position_embeddings)
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    per_domain: dict[str, list[tuple[float, int, int, str]]] = {}
    skipped: dict[str, int] = {}
    texts = docs.column(params.text_column).to_pylist()
    domains = docs.column(params.domain_column).to_pylist()
    ids_col = docs.column("doc_id").to_pylist() if "doc_id" in docs.column_names else range(docs.num_rows)
    ticker = Ticker()
    for i, (text, domain, doc) in enumerate(zip(texts, domains, ids_col, strict=True)):
        ticker.line(f"evaluate: heldout bits/byte, document {i}/{len(texts)}, {ticker.elapsed():.0f} s elapsed"
                    f"{ticker.eta(i, len(texts))}", force=i == 0)
        domain = "__null__" if domain is None else str(domain)
        if not text:
            skipped[domain] = skipped.get(domain, 0) + 1
            continue
        ids = tok(text, add_special_tokens=False)["input_ids"]
        per_domain.setdefault(domain, []).append(
            (_doc_nll(model, ids, bos, window, device), len(ids), len(text.encode()), str(doc))
        )
    rows, examples = [], []
    groups = {f"heldout/{d}": v for d, v in sorted(per_domain.items())}
    if len(groups) > 1:
        groups["heldout/all"] = [x for v in per_domain.values() for x in v]
    scorer = {"scorer": _HELDOUT_SCORER, "text_column": params.text_column, "domain_column": params.domain_column,
              "window": window, "bos": bos}  # fmt: skip
    prov = {"harness_version": _HELDOUT_SCORER, "task_config_hash": _sha256_json(scorer), "num_fewshot": 0,
            "n_truncated": 0,  # scored in windows of the context (_doc_nll): nothing is cut
            "fewshot_seed": None, "batch_size": 1, "dtype": params.dtype, "device": device}  # fmt: skip
    texts_by_domain: dict[str, list[str]] = {}
    for text, domain in zip(texts, domains, strict=True):
        if text:
            texts_by_domain.setdefault("__null__" if domain is None else str(domain), []).append(text)
    file_hash = {f"heldout/{d}": _sha256_json(sorted(t)) for d, t in texts_by_domain.items()}
    file_hash["heldout/all"] = _sha256_json(sorted(t for v in texts_by_domain.values() for t in v))
    for task, vals in groups.items():
        examples += [{"task": task, "metric": "bits_per_byte", "example": doc, "value": nll / math.log(2) / nb,
                      "weight": float(nb), "chance": None} for nll, _, nb, doc in vals]  # fmt: skip
        vals = [v[:3] for v in vals]
        nll, ntok, nbytes = (np.array(c, dtype=np.float64) for c in zip(*vals, strict=True))
        se_tok = _ratio_stderr(nll, ntok)
        ppl = math.exp(nll.sum() / ntok.sum())
        se_bpb = _ratio_stderr(nll / math.log(2), nbytes)
        p = {**prov, "eval_file_hash": file_hash[task]}
        rows.append({"task": task, "metric": "bits_per_byte", "value": nll.sum() / math.log(2) / nbytes.sum(),
                     "stderr": se_bpb, "n": len(vals), **p})  # fmt: skip
        rows.append({"task": task, "metric": "perplexity", "value": ppl,
                     "stderr": None if se_tok is None else ppl * se_tok, "n": len(vals), **p})  # fmt: skip
    for domain, k in sorted(skipped.items()):
        rows.append({"task": f"heldout/{domain}", "metric": "docs_skipped", "value": float(k), "stderr": None, "n": k,
                     **prov, "eval_file_hash": file_hash.get(f"heldout/{domain}")})  # fmt: skip
    table = pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)
    if not return_examples:
        return table
    return table, pa.Table.from_pylist(examples, schema=EXAMPLE_SCHEMA)


def _sha256_json(value) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- (b) lm-evaluation-harness


def harness_eval(
    model_dir: str | Path, params: EvaluateParams, *, return_samples: bool = False, return_examples: bool = False
) -> pa.Table | tuple[pa.Table, ...]:
    """Score the model on the local eval tasks with lm-evaluation-harness; one row per (task, metric).

    With return_samples, also returns the per-request log-likelihoods
    (task, doc_index, request, context, continuation, loglik, is_greedy) for inspection; with return_examples,
    each example's score per metric (EXAMPLE_SCHEMA), in that order after the table.
    """
    if params.eval_dir is None:
        raise ValueError("EvaluateParams.eval_dir must point at the local eval data (../shared/data/eval)")
    os.environ["HF_DATASETS_OFFLINE"] = "1"  # the task configs read local files; never fall back to the hub
    os.environ["HF_HUB_OFFLINE"] = "1"
    from importlib.metadata import version

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    device = _device(params)
    with tempfile.TemporaryDirectory(prefix="quarry-eval-tasks-") as task_dir:
        names = write_task_configs(params.eval_dir, task_dir, params.tasks)
        hashes = {t: (task_config_hash(task_dir, params.eval_dir, t), eval_file_hash(params.eval_dir, t))
                  for t in params.tasks}  # fmt: skip
        lm = HFLM(pretrained=str(model_dir), device=device, batch_size=params.batch_size, dtype=params.dtype)
        _report_progress(lm, params)
        truncated = truncation.watch(lm)
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=names,
            num_fewshot=params.num_fewshot,
            fewshot_random_seed=params.fewshot_seed,
            limit=params.limit,
            task_manager=TaskManager(include_path=task_dir, include_defaults=False),
            log_samples=return_samples or return_examples,
            bootstrap_iters=1000,  # only perplexity-type metrics bootstrap; 1000 keeps the stderr cheap
        )
    prov = {"harness_version": f"lm_eval=={version('lm_eval')}", "num_fewshot": params.num_fewshot,
            "fewshot_seed": params.fewshot_seed, "batch_size": params.batch_size, "dtype": params.dtype,
            "device": device}  # fmt: skip
    table = _results_table(out, prov, hashes, truncation.counts(truncated, lm.max_length))
    extra = ([_samples_table(out)] if return_samples else []) + ([_examples_table(out)] if return_examples else [])
    return (table, *extra) if extra else table


def _report_progress(lm, params: EvaluateParams) -> None:
    """Progress lines from inside lm-eval (it only draws tqdm bars): the requests of each request type (one line as
    a type starts and ends: the harness scores every task's examples of a type in one call) and, every ~10 s, the
    requests scored so far (rows of the model's forward batches; lm-eval groups requests that share a context, so
    the count reaches the total only roughly)."""
    ticker, state = Ticker(), {"done": 0, "total": 0}
    forward, loglikelihood = lm._model_call, lm.loglikelihood

    def model_call(inps, *args, **kwargs):
        out = forward(inps, *args, **kwargs)
        state["done"] += int(inps.shape[0])
        done, total = min(state["done"], state["total"]), state["total"]
        ticker.line(f"evaluate: harness {done:,}/{total:,} requests scored ({len(params.tasks)} tasks, "
                    f"limit {params.limit}), {ticker.elapsed():.0f} s elapsed{ticker.eta(done, total)}")
        return out

    def scored(requests, *args, **kwargs):
        state["done"], state["total"] = 0, len(requests)
        ticker.line(f"evaluate: harness scoring {len(requests):,} log-likelihood requests of tasks "
                    f"{', '.join(params.tasks)}", force=True)
        out = loglikelihood(requests, *args, **kwargs)
        ticker.line(f"evaluate: harness scored {len(requests):,} requests, {ticker.elapsed():.0f} s elapsed",
                    force=True)
        return out

    lm._model_call, lm.loglikelihood = model_call, scored


def _spec_key(task: str) -> str:
    """The SPECS key a result or sample task belongs to (MMLU subjects -> mmlu)."""
    return "mmlu" if task.startswith("mmlu_") else task


def _results_table(out: dict, prov: dict, hashes: dict[str, tuple[str, str]],
                   truncated: dict[str, int] | None = None) -> pa.Table:
    rows = []
    n_samples = out.get("n-samples", {})
    truncated = truncated or {}
    for task, metrics in {**out.get("results", {}), **out.get("groups", {})}.items():
        n = n_samples.get(task, {}).get("effective")
        cut = truncated.get(task.removeprefix("quarry_"), 0)
        if n is None and task in out.get("group_subtasks", {}):
            n = sum(n_samples.get(s, {}).get("effective", 0) for s in out["group_subtasks"][task])
            cut = sum(truncated.get(s.removeprefix("quarry_"), 0) for s in out["group_subtasks"][task])
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key or not isinstance(value, int | float):
                continue
            metric = key.split(",")[0]
            stderr = metrics.get(f"{metric}_stderr,{key.split(',', 1)[1]}")
            name = task.removeprefix("quarry_")
            config_hash, file_hash = hashes[_spec_key(name)]
            rows.append(
                {
                    "task": name,
                    "metric": metric,
                    "value": float(value),
                    "stderr": float(stderr) if isinstance(stderr, int | float) else None,
                    "n": n,
                    "n_truncated": cut,
                    **prov,
                    "task_config_hash": config_hash,
                    "eval_file_hash": file_hash,
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


def _examples_table(out: dict) -> pa.Table:
    """Each example's per-sample metric values (lm-eval logs acc/acc_norm per document). Chance is 1 / the number
    of choices for multiple choice, 0 for a cloze target (LAMBADA's greedy match), as DCLM centers them."""
    rows = []
    for task, samples in out.get("samples", {}).items():
        name = task.removeprefix("quarry_")
        spec = SPECS[_spec_key(name)]
        for s in samples:
            chance = 1.0 / len(s["arguments"]) if spec["output_type"] == "multiple_choice" else 0.0
            for metric in spec["metrics"]:
                if metric == "perplexity" or not isinstance(s.get(metric), int | float | bool):
                    continue  # perplexity aggregates over the corpus, not per example
                rows.append({"task": name, "metric": metric, "example": str(s["doc_id"]), "value": float(s[metric]),
                             "weight": 1.0, "chance": chance})  # fmt: skip
    return pa.Table.from_pylist(rows, schema=EXAMPLE_SCHEMA)


# ---------------------------------------------------------------------------------------------------------------
# the ``evaluate`` stage (kind ``global``)


@implements("evaluate")
def evaluate_stage(tables: dict, params: EvaluateParams, ctx) -> tuple[pa.Table, dict]:
    """Bits/byte on the held-out documents (when the recipe holds some out) and the harness tasks, for the model
    of the ``train`` input; every row names the model and the data it was trained on."""
    model_dir = ctx.input_dir("train") / "run" / "hf"
    parts, examples = [], []
    if "heldout" in tables:
        t, ex = heldout_bpb(model_dir, tables["heldout"], params, return_examples=True)
        parts.append(t)
        examples.append(ex)
    if params.eval_dir and params.tasks:
        t, ex = harness_eval(model_dir, params, return_examples=True)
        parts.append(t)
        examples.append(ex)
        parts.append(_centered_row(ex, t))
    table = pa.concat_tables(parts, promote_options="permissive") if parts else RESULT_SCHEMA.empty_table()
    examples = pa.concat_tables(examples) if examples else EXAMPLE_SCHEMA.empty_table()
    data_version = next(iter(ctx.input_manifest("train")["parents"]), None)
    n = table.num_rows
    table = table.append_column("model_version", pa.array([ctx.input_ref("train")] * n, pa.string()))
    table = table.append_column("data_version", pa.array([data_version] * n, pa.string()))
    table = table.append_column("dataset", pa.array([ctx.dst.dataset] * n, pa.string()))
    scores = table.select([c for c in ("task", "metric", "value", "stderr", "n", "n_truncated")
                           if c in table.column_names])
    truncated = {r["task"]: r["n_truncated"] for r in scores.to_pylist() if r["n_truncated"]}
    return {"evaluate": table, "evaluate_examples": examples}, {"scores": scores.to_pylist(), "truncated": truncated}


def _centered_row(examples: pa.Table, harness: pa.Table) -> pa.Table:
    """The DCLM-style aggregate beside the per-task rows: centered accuracy averaged over tasks (tasks/evaluate/compare.py);
    n = the number of tasks, stderr left empty (the experiment's bootstrap gives its interval)."""
    cen = centered_rows(examples)
    if cen.num_rows == 0:
        return RESULT_SCHEMA.empty_table()
    v, w = (np.array(cen.column(c).to_pylist()) for c in ("value", "weight"))
    n_tasks = len({_spec_key(t.split("/", 1)[0]) for t in cen["example"].to_pylist()})
    prov = {k: harness.column(k)[0].as_py() for k in ("harness_version", "num_fewshot", "fewshot_seed", "batch_size",
                                                       "dtype", "device")}  # fmt: skip
    rows = harness.to_pylist()
    acc = sorted({(r["task"], r["task_config_hash"], r["eval_file_hash"]) for r in rows if r["metric"] == "acc"})
    return pa.Table.from_pylist([{"task": CENTERED_TASK, "metric": CENTERED_METRIC,
                                  "value": float((v * w).sum() / w.sum()), "stderr": None, "n": n_tasks, **prov,
                                  "n_truncated": sum({r["task"]: r["n_truncated"] or 0 for r in rows
                                                      if r["metric"] == "acc"}.values()),
                                  "task_config_hash": _sha256_json([a[1] for a in acc]),
                                  "eval_file_hash": _sha256_json([a[2] for a in acc])}], schema=RESULT_SCHEMA)  # fmt: skip


def evaluate_artifact(manifest: dict) -> list[tuple[str, list[dict], str]]:
    return [("eval-results", (manifest.get("stats") or {}).get("scores") or [],
             f"evaluation {manifest['dataset']}/{manifest['stage']}/{manifest['version']}")]
