"""The `vllm` backend: vLLM engine replicas run as Ray Data's LLM processor (built in ray_cluster/llm.py), around the
pure halves here. `vllm_preprocess` turns a document row into messages + per-request sampling params (each document
keeps its own seed); `vllm_postprocess` turns the engine's row back into the input columns + the same aug_* columns
the Augmenter writes. `route` and `vllm_hooks` are what the registry hands the executor."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping

from tasks.augment.backends.base import Completion
from tasks.augment.params import AugmentParams
from tasks.augment.prompts import load_truncation_tokenizer
from tasks.augment.rows import Prepared, aug_row, generation_params_json, prepare

_CARRY = "aug_carry_columns"  # names of the input columns, so postprocess drops every engine column


def vllm_sampling_params(params: AugmentParams, seed: int) -> dict:
    """vLLM SamplingParams kwargs (per request, so each document keeps its own seed)."""
    return {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_new_tokens,
        "seed": seed,
        "stop": list(params.stop),
        "detokenize": True,
    }


def vllm_preprocess(row: Mapping, params: AugmentParams) -> dict:
    """Document row -> row with `messages` + `sampling_params` for Ray Data's vLLM processor, plus our carried fields.

    Rows that cannot be augmented (null/empty text) still go through with a one-token dummy prompt and
    `max_tokens=1`, so that they come back and are recorded with their reason by vllm_postprocess."""
    tokenizer = load_truncation_tokenizer(params.tokenizer or params.model)
    p = prepare(row.get("doc_id"), row.get("text"), params, tokenizer)
    out = dict(row)
    out[_CARRY] = json.dumps(list(row.keys()))
    out["aug_prep"] = json.dumps(
        {
            "doc_id": p.doc_id,
            "document": p.document,
            "full_text": p.full_text,
            "doc_tokens": p.doc_tokens,
            "truncated": p.truncated,
            "seed": p.seed,
            "error": p.error,
        }
    )
    if p.messages is None:
        out["messages"] = [{"role": "user", "content": "."}]
        out["sampling_params"] = vllm_sampling_params(params, p.seed) | {"max_tokens": 1}
    else:
        out["messages"] = p.messages
        out["sampling_params"] = vllm_sampling_params(params, p.seed)
    return out


def vllm_postprocess(row: Mapping, params: AugmentParams) -> dict:
    """vLLM engine output row -> the input columns + our aug_* columns.

    Ray's vLLM stage reports no finish reason: a generation that used all max_tokens is "length", else "stop".
    Engine failures (`__inference_error__`, with should_continue_on_error=True) become error rows."""
    prep = json.loads(row["aug_prep"])
    p = Prepared(
        prep["doc_id"],
        prep["document"],
        prep["full_text"],
        prep["doc_tokens"],
        prep["truncated"],
        prep["seed"],
        None,
        prep["error"],
    )
    if p.error is not None:
        c = None
    elif row.get("__inference_error__"):
        c = Completion(None, "error", None, None, 0.0, f"vllm: {row['__inference_error__']}")
    else:
        n_gen = int(row.get("num_generated_tokens") or 0)
        reason = "length" if n_gen >= params.max_new_tokens else "stop"
        c = Completion(
            row.get("generated_text"),
            reason,
            row.get("num_input_tokens"),
            n_gen,
            float(row.get("time_taken_llm") or 0.0),
        )
    out = {k: row[k] for k in json.loads(row[_CARRY]) if k in row}
    out.update(aug_row(p, c, params, params.model, generation_params_json(params)))
    return out


def route(params: AugmentParams) -> str:
    """vLLM runs as Ray Data's LLM processor (engine replicas), every other backend as an actor pool."""
    return "llm" if params.backend == "vllm" else "actor"


def vllm_hooks(params: AugmentParams) -> dict:
    """What the engine needs: the model, the pure pre/post-processing halves and the context length."""
    return {
        "model_source": params.model,
        "preprocess": functools.partial(vllm_preprocess, params=params),
        "postprocess": functools.partial(vllm_postprocess, params=params),
        "engine_kwargs": {"max_model_len": params.max_input_tokens + 256 + params.max_new_tokens}
        | dict(params.engine_kwargs or {}),
    }
