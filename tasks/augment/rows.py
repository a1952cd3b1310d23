"""One document row in, one augmented row out, whatever the engine: the chat messages, the parsing of a completion into
thinking + sample, and the provenance columns (AUG_SCHEMA) with `aug_key`, which hashes (the text the row read,
teacher, generation parameters) so a re-run reuses documents already augmented the same way (`pending_docs`). Never
the doc_id: a source file replaced at the same path, or a text redacted by pii, keeps its doc_id but is other input,
and reusing by id would carry the old text's generation into the new version (issue 34). The reliability suite
compares engines' rows column by column, so this contract lives in one place."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from tasks.augment.backends.base import Completion, local_engine, local_teacher_id
from tasks.augment.backends.llama_cpp_backend import llama_weights
from tasks.augment.params import AugmentParams
from tasks.augment.prompts import build_prompt, doc_seed, template_sha, truncate_document

AUG_SCHEMA = pa.schema(
    [
        ("aug_source_id", pa.string()),
        ("aug_text", pa.string()),  # the training sample; null when the row failed
        ("aug_thinking", pa.string()),
        ("aug_teacher", pa.string()),
        ("aug_template_id", pa.string()),
        ("aug_params", pa.string()),  # json of every generation-affecting parameter (incl. template sha, separator)
        ("aug_seed", pa.int64()),
        ("aug_document_tokens", pa.int64()),  # document tokens fed to the teacher (after truncation)
        ("aug_truncated", pa.bool_()),
        ("aug_prompt_tokens", pa.int64()),
        ("aug_completion_tokens", pa.int64()),
        ("aug_finish_reason", pa.string()),  # "stop" | "length" | "error"
        # llama.cpp: admission to last token; transformers: its generate() chunk; openai: incl. retries; vllm: engine
        ("aug_latency_s", pa.float64()),
        ("aug_error", pa.string()),
        ("aug_key", pa.string()),
    ]
)


def build_messages(document: str, params: AugmentParams, *, seed: int = 0) -> list[dict]:
    """Chat messages for one (already truncated) document: a single user turn holding the filled template."""
    return [{"role": "user", "content": build_prompt(document, params.template, seed=seed)}]


# ---------------------------------------------------------------------------------------------------------------
# provenance


def teacher_id(params: AugmentParams) -> str:
    """The teacher recorded in aug_teacher and hashed into aug_key (local ids: the GGUF's hash and the engine)."""
    if params.backend == "local":
        engine = local_engine(params.engine, params.model)
        weights = llama_weights(params.gguf_weights) if engine == "llama_cpp" else "as_is"
        return local_teacher_id(params.model, engine, weights)
    return params.model


def generation_params(params: AugmentParams) -> dict:
    """Every parameter that changes what is generated or how the sample is laid out (not transport settings)."""
    return {
        "template": params.template,
        "template_sha": template_sha(params.template),
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_new_tokens": params.max_new_tokens,
        "seed": params.seed,
        "max_input_tokens": params.max_input_tokens,
        "tokenizer": params.tokenizer or params.model,
        "stop": list(params.stop),
        "separator": params.separator,
        "think_open": params.think_open,
        "think_close": params.think_close,
        "document_in_sample": params.document_in_sample,
    }


def generation_params_json(params: AugmentParams) -> str:
    """generation_params as the canonical json recorded in aug_params and hashed into aug_key."""
    return json.dumps(generation_params(params), sort_keys=True, ensure_ascii=False)


def text_sha(text: str | None) -> str:
    """The content the teacher would read: sha256 of the row's text (a null text hashes as its own token)."""
    return "null" if text is None else hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def aug_key(content_sha: str, teacher: str, params_json: str) -> str:
    """Deterministic id of "this exact text augmented this way" (``content_sha``: ``text_sha`` of the input)."""
    return hashlib.sha256(json.dumps([content_sha, teacher, params_json]).encode()).hexdigest()[:24]


def aug_keys(batch: pa.Table, params: AugmentParams) -> pa.Array:
    """aug_key of every row of a documents table, from its ``text`` (no model is loaded)."""
    check_input(batch)
    teacher, pj = teacher_id(params), generation_params_json(params)
    return pa.array([aug_key(text_sha(t), teacher, pj) for t in batch.column("text").to_pylist()], pa.string())


def pending_docs(
    batch: pa.Table, done: pa.Table | None, params: AugmentParams, *, retry_failed: bool = True
) -> pa.Table:
    """Rows of `batch` not yet augmented with these (teacher, template, params) according to `done` (previous
    augment output). Failed rows (aug_error set) count as not done unless retry_failed=False."""
    if done is None or done.num_rows == 0:
        return batch
    ok = done if not retry_failed else done.filter(pc.is_null(done.column("aug_error")))
    return batch.filter(pc.invert(pc.is_in(aug_keys(batch, params), value_set=ok.column("aug_key").combine_chunks())))


# ---------------------------------------------------------------------------------------------------------------
# output parsing


def parse_completion(
    text: str | None, finish_reason: str, params: AugmentParams, error: str | None = None
) -> tuple[str | None, str, str | None]:
    """(thinking, finish_reason, error) from a raw completion.

    A leading <think> (Qwen3/R1-style teachers open their own block) is dropped; text after </think> is cut (a
    server that ignored `stop`); without </think> the whole completion is the thinking and the engine's finish reason
    stands ("length" when max_new_tokens was hit). Empty thinking is an error row, never a silent drop."""
    if finish_reason == "error":
        return None, "error", error or "aug_generation_failed"
    if finish_reason not in ("stop", "length"):
        return None, "error", f"aug_unknown_finish_reason: {finish_reason!r}"
    if text is None or not text.strip():
        return None, finish_reason, "aug_empty_completion"
    body = text.lstrip()
    open_tag = params.think_open.strip()
    if open_tag and body.startswith(open_tag):
        body = body[len(open_tag) :]
    close_tag = params.think_close.strip()
    if close_tag and close_tag in body:
        body = body[: body.index(close_tag)]
        finish_reason = "stop"  # the thinking is complete even if the engine also hit its limit right there
    thinking = body.strip()
    if not thinking:
        return None, finish_reason, "aug_empty_thinking"
    return thinking, finish_reason, None


def compose_sample(document: str, thinking: str, params: AugmentParams) -> str:
    """The training sample x = [d ; <think> t </think>] with the recorded separator and tags."""
    return f"{document}{params.separator}{params.think_open}{thinking}{params.think_close}"


@dataclass(frozen=True, slots=True)
class Prepared:
    """A document made ready for the teacher (or the reason it cannot be), carried to its output row."""

    doc_id: str
    document: str | None  # truncated document; None when the input row cannot be augmented
    full_text: str | None
    doc_tokens: int | None
    truncated: bool | None
    seed: int
    messages: list | None
    error: str | None


def prepare(doc_id, text, params: AugmentParams, tokenizer) -> Prepared:
    """Seed, truncate and wrap one document in the template; null or blank text gets its error instead."""
    doc_id = "" if doc_id is None else str(doc_id)
    seed = doc_seed(params.seed, doc_id)
    if text is None:
        return Prepared(doc_id, None, None, None, None, seed, None, "aug_null_text")
    if not text.strip():
        return Prepared(doc_id, None, text, 0, False, seed, None, "aug_empty_document")
    document, n, cut = truncate_document(text, tokenizer, params.max_input_tokens)
    return Prepared(doc_id, document, text, n, cut, seed, build_messages(document, params, seed=seed), None)


def aug_row(p: Prepared, c: Completion | None, params: AugmentParams, teacher: str, params_json: str) -> dict:
    """The aug_* values of one document (completion None = it never reached the teacher)."""
    if c is None:  # the document never reached the teacher
        thinking, reason, error = None, "error", p.error
        c = Completion(None, "error", None, None, 0.0, p.error)
    else:
        thinking, reason, error = parse_completion(c.text, c.finish_reason, params, c.error)
    sample_doc = p.document if params.document_in_sample == "truncated" else p.full_text
    return {
        "aug_source_id": p.doc_id,
        "aug_text": compose_sample(sample_doc, thinking, params) if thinking is not None else None,
        "aug_thinking": thinking,
        "aug_teacher": teacher,
        "aug_template_id": params.template,
        "aug_params": params_json,
        "aug_seed": p.seed,
        "aug_document_tokens": p.doc_tokens,
        "aug_truncated": p.truncated,
        "aug_prompt_tokens": c.prompt_tokens,
        "aug_completion_tokens": c.completion_tokens,
        "aug_finish_reason": reason,
        "aug_latency_s": float(c.latency_s),
        "aug_error": error,
        "aug_key": aug_key(text_sha(p.full_text), teacher, params_json),
    }


def parse_completions(
    batch: pa.Table,
    prepared: Sequence[Prepared],
    completions: Sequence[Completion | None],
    params: AugmentParams,
    teacher: str,
) -> pa.Table:
    """The input batch plus the aug_* columns, one row per input row (completion None = never sent)."""
    pj = generation_params_json(params)
    rows = [aug_row(p, c, params, teacher, pj) for p, c in zip(prepared, completions, strict=True)]
    out = batch
    for field in AUG_SCHEMA:
        if field.name in out.column_names:  # re-augmenting augmented rows: new provenance replaces the old
            out = out.drop_columns([field.name])
        out = out.append_column(field, pa.array([r[field.name] for r in rows], field.type))
    return out


def check_input(batch: pa.Table) -> None:
    """A clear error for a batch without the columns augment reads."""
    missing = [c for c in ("doc_id", "text") if c not in batch.column_names]
    if missing:
        raise KeyError(f"augment needs columns doc_id and text; missing {missing} in {batch.column_names}")
