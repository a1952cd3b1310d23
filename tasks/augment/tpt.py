"""Thinking-augmented pre-training data (TPT, Wang et al. 2025, arXiv:2509.20186): document d -> sample [d ; <think> t </think>].

A teacher LLM reads each document (truncated to `max_input_tokens` of the teacher's tokenizer) inside a versioned
prompt template (tasks/augment/templates/tpt_*.txt: the paper's template verbatim, and the "random focus" ablation) and
writes a thinking trajectory t. Every input document gives exactly one output row carrying its provenance (teacher,
template, sampling parameters, seed, token counts, finish reason, latency); failed or empty generations keep their
row with `aug_error` set and `aug_text` null. `aug_key` hashes (doc_id, teacher, template, generation parameters) so
the engine can skip documents already augmented the same way (`pending_docs`).

Kinds:
  * `Augmenter(params)` (kind (b)): loads the teacher once; `__call__(batch)` for the `local` and `openai` backends.
  * `vllm_preprocess(row, params)` / `vllm_postprocess(row, params)`: the pure halves around Ray Data's vLLM
    processor (`ray.data.llm.build_processor`); the processor itself is built in ray_cluster/.
  * `augment_cost(rows, elapsed_s=..., num_gpus=...)`: generation cost accounting for the manifest.

    python -c "import pyarrow as pa; from tasks.augment.tpt import *; \\
      print(Augmenter(AugmentParams(max_new_tokens=32))(pa.table({'doc_id': ['a'], 'text': ['Water boils at 100 C.']})))"

Size: the TPT contract in one place: templates, truncation, the parsing of completions, the provenance columns,
reuse keys and cost are the same for every backend (llama.cpp, transformers, an OpenAI endpoint, vLLM), and the
reliability suite compares their rows column by column.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from tasks.augment.backends import (
    GGUF_WEIGHTS,
    LOCAL_ENGINES,
    SMOLLM2,
    Completion,
    Sampling,
    llama_weights,
    local_engine,
    local_teacher_id,
)

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
CONTEXT_SLOT = "{{CONTEXT}}"  # the paper's placeholder (replaced literally: documents contain braces)
FOCUS_MARKER = "<<<READING HERE>>>"  # TPT "random focus" ablation
BACKENDS = ("local", "openai", "vllm")
_TEMPLATE_ID = re.compile(r"^tpt_[a-z0-9_]+_v\d+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_URL_CREDENTIALS = re.compile(r"://[^/@\s]{0,256}:[^/@\s]{0,1024}@")  # scheme://user:password@host (bounded)
_log = logging.getLogger("quarry.augment")

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


@dataclass(frozen=True, kw_only=True, slots=True)
class AugmentParams:
    """Teacher, prompt, sampling and transport settings of the augment stage (defaults: TPT paper §3 / App. A)."""

    # "local" (llama.cpp, or transformers, on this machine), "openai" (any OpenAI-compatible endpoint), "vllm" (Ray
    # Data LLM).
    backend: str = "local"
    # local backend: "auto" = llama.cpp over the GGUF when llama_cpp is importable, else transformers (logged);
    # "llama_cpp" or "transformers" to choose. The engine (and its version) is part of aug_teacher.
    engine: str = "auto"
    # local backend on llama.cpp: "auto" = a bf16 re-encoding of the GGUF's weights where the CPU has native bf16 dot
    # products (2-4x the Q4_1 file's prompt speed, tasks.augment.backends.llama_weights), else the file as is; "as_is" or
    # "bf16" to choose. Part of aug_teacher.
    gguf_weights: str = "auto"
    # Teacher: "smollm2" = the bundled SmolLM2-135M-Instruct GGUF, or a local HF model dir (local); the model name
    # served at base_url (openai); an HF id or path (vllm). The paper used Qwen3-8B / DeepSeek-R1-Distill-Qwen-7B and
    # found a 1.5B teacher as good, so small teachers are legitimate.
    model: str = SMOLLM2
    # Tokenizer for input truncation; None = the teacher's own ("smollm2", a local dir or an HF id).
    tokenizer: str | None = None
    # Versioned template file tasks/augment/templates/<template>.txt: "tpt_paper_v1" or "tpt_random_focus_v1".
    template: str = "tpt_paper_v1"
    temperature: float = 0.6  # paper
    top_p: float = 0.9  # paper
    max_new_tokens: int = 8192  # paper: up to 8k thinking tokens; tiny recipes/tests use 32
    seed: int = 0  # per-document seeds are derived from (seed, doc_id)
    max_input_tokens: int = 2048  # paper: document truncated to 2k tokens
    stop: tuple[str, ...] = ("</think>",)  # paper: generation stops at </think>
    # Sample layout (the paper does not fix the separator; it is recorded in aug_params).
    separator: str = "\n\n"
    think_open: str = "<think>\n"
    think_close: str = "\n</think>"
    # Which document goes into the sample: "truncated" keeps the thinking next to the text it discusses once packed;
    # "full" is the whole original document.
    document_in_sample: str = "truncated"
    # local backend: sequences in flight (llama.cpp: decoded together, a finished one makes room for the next;
    # transformers: documents per generate() call)
    batch_size: int = 8
    # local backend: llama.cpp / torch threads; None = OMP_NUM_THREADS (Ray sets it from the profile's num_cpus), else
    # the engine's default. On an oversubscribed CPU, torch's OpenMP spin-waits make 2 threads ~40x slower than 1 for
    # decode-sized matmuls (measured).
    num_threads: int | None = None
    # openai backend
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str | None = "OPENAI_API_KEY"  # the NAME of the environment variable holding the key, never a key
    concurrency: int = 8  # requests in flight
    retries: int = 4  # extra attempts on 429/5xx/timeouts
    timeout_s: float = 120.0  # per request
    backoff_s: float = 0.5  # first retry delay, doubled per attempt (with jitter), capped at 30 s
    # vllm backend: extra vLLM engine arguments over ours (e.g. tensor_parallel_size: 4 for a teacher too big for one
    # GPU, pipeline_parallel_size, gpu_memory_utilization, dtype, max_num_seqs); a key here wins over our defaults.
    engine_kwargs: Mapping[str, str | int | float | bool] | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.engine not in LOCAL_ENGINES:
            raise ValueError(f"engine must be one of {LOCAL_ENGINES}, got {self.engine!r}")
        if self.gguf_weights not in GGUF_WEIGHTS:
            raise ValueError(f"gguf_weights must be one of {GGUF_WEIGHTS}, got {self.gguf_weights!r}")
        load_template(self.template)  # unknown template -> clear error at config time
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        for name in ("max_new_tokens", "max_input_tokens", "batch_size", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.retries < 0 or self.timeout_s <= 0 or self.backoff_s < 0:
            raise ValueError("retries and backoff_s must be >= 0 and timeout_s > 0")
        if self.document_in_sample not in ("truncated", "full"):
            raise ValueError(f"document_in_sample must be 'truncated' or 'full', got {self.document_in_sample!r}")
        if self.api_key_env is not None and not _ENV_NAME.match(self.api_key_env):
            # Do not echo the value: it may be a pasted key.
            raise ValueError("api_key_env must be the NAME of an environment variable (e.g. OPENAI_API_KEY)")
        if _URL_CREDENTIALS.search(self.base_url):
            raise ValueError("base_url must not hold credentials (user:password@); the key comes from api_key_env")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 (or absent for torch's default), got {self.num_threads}")
        if not all(self.stop):
            raise ValueError("stop sequences must not be empty strings")
        if self.engine_kwargs:
            if self.backend != "vllm":
                raise ValueError(f"engine_kwargs are vLLM engine arguments: they need backend vllm, not {self.backend!r}")
            for name in ("tensor_parallel_size", "pipeline_parallel_size"):
                value = self.engine_kwargs.get(name, 1)
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"engine_kwargs.{name} must be an integer >= 1, got {value!r}")
            if "model" in self.engine_kwargs:
                raise ValueError("engine_kwargs.model: name the teacher with augment.model")


def devices_per_replica(params: AugmentParams) -> int:
    """Accelerators one vLLM replica holds: tensor x pipeline parallel (Ray reserves that many GPU bundles)."""
    kw = params.engine_kwargs or {}
    return int(kw.get("tensor_parallel_size", 1)) * int(kw.get("pipeline_parallel_size", 1))


# ---------------------------------------------------------------------------------------------------------------
# prompt building


@functools.lru_cache(maxsize=16)
def load_template(template_id: str) -> str:
    """Template text of tasks/augment/templates/<template_id>.txt (a trailing newline, if an editor added one, is dropped)."""
    if not _TEMPLATE_ID.match(template_id):
        raise ValueError(f"template id must look like tpt_<name>_v<N>, got {template_id!r}")
    path = TEMPLATES_DIR / f"{template_id}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in TEMPLATES_DIR.glob("tpt_*.txt"))
        raise ValueError(f"unknown template {template_id!r}; known: {known}")
    text = path.read_text(encoding="utf-8").rstrip("\n")
    if text.count(CONTEXT_SLOT) != 1:
        raise ValueError(f"template {template_id!r} must contain {CONTEXT_SLOT} exactly once")
    return text


def template_sha(template_id: str) -> str:
    """Short content hash of a template, recorded so an edited file cannot pass for the same version."""
    return hashlib.sha256(load_template(template_id).encode()).hexdigest()[:12]


def doc_seed(seed: int, doc_id: str) -> int:
    """Per-document seed from (stage seed, doc_id): independent of batch composition and order."""
    return int(hashlib.sha256(f"{seed}:{doc_id}".encode()).hexdigest()[:8], 16) & 0x7FFF_FFFF


def build_prompt(document: str, template_id: str, *, seed: int = 0) -> str:
    """The template with the document in place of {{CONTEXT}}; a focus template also gets the marker inserted
    into the document at a seeded random character position (TPT ablation)."""
    template = load_template(template_id)
    if FOCUS_MARKER in template:
        pos = random.Random(seed).randint(0, len(document))
        document = document[:pos] + FOCUS_MARKER + document[pos:]
    return template.replace(CONTEXT_SLOT, document)


def build_messages(document: str, params: AugmentParams, *, seed: int = 0) -> list[dict]:
    """Chat messages for one (already truncated) document: a single user turn holding the filled template."""
    return [{"role": "user", "content": build_prompt(document, params.template, seed=seed)}]


def truncate_document(text: str, tokenizer, max_tokens: int) -> tuple[str, int, bool]:
    """(prefix of `text` of at most max_tokens tokens, its token count, whether it was cut).

    Cuts at the character offset of the last kept token, so the result is an exact prefix of the original text
    (decoding a token prefix can differ, e.g. a split multi-byte character)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=getattr(tokenizer, "is_fast", False))
    ids = enc["input_ids"]
    if len(ids) <= max_tokens:
        return text, len(ids), False
    if "offset_mapping" in enc:
        return text[: enc["offset_mapping"][max_tokens - 1][1]], max_tokens, True
    return tokenizer.decode(ids[:max_tokens]), max_tokens, True


@functools.lru_cache(maxsize=4)
def load_truncation_tokenizer(name: str):
    """Tokenizer by name ("smollm2", a local dir or an HF id), once per process (vLLM pre-process workers too)."""
    if name == SMOLLM2:
        from tasks.common.assets import load_tokenizer

        return load_tokenizer(SMOLLM2)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


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


def _params_json(params: AugmentParams) -> str:
    return json.dumps(generation_params(params), sort_keys=True, ensure_ascii=False)


def aug_key(doc_id: str, teacher: str, params_json: str) -> str:
    """Deterministic id of "this document augmented this way"."""
    return hashlib.sha256(json.dumps([doc_id, teacher, params_json]).encode()).hexdigest()[:24]


def aug_keys(batch: pa.Table, params: AugmentParams) -> pa.Array:
    """aug_key of every row of a documents table (no model is loaded)."""
    teacher, pj = teacher_id(params), _params_json(params)
    return pa.array([aug_key(str(d), teacher, pj) for d in batch.column("doc_id").to_pylist()], pa.string())


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
class _Prepared:
    doc_id: str
    document: str | None  # truncated document; None when the input row cannot be augmented
    full_text: str | None
    doc_tokens: int | None
    truncated: bool | None
    seed: int
    messages: list | None
    error: str | None


def _prepare(doc_id, text, params: AugmentParams, tokenizer) -> _Prepared:
    doc_id = "" if doc_id is None else str(doc_id)
    seed = doc_seed(params.seed, doc_id)
    if text is None:
        return _Prepared(doc_id, None, None, None, None, seed, None, "aug_null_text")
    if not text.strip():
        return _Prepared(doc_id, None, text, 0, False, seed, None, "aug_empty_document")
    document, n, cut = truncate_document(text, tokenizer, params.max_input_tokens)
    return _Prepared(doc_id, document, text, n, cut, seed, build_messages(document, params, seed=seed), None)


def _row(p: _Prepared, c: Completion | None, params: AugmentParams, teacher: str, params_json: str) -> dict:
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
        "aug_key": aug_key(p.doc_id, teacher, params_json),
    }


def parse_completions(
    batch: pa.Table,
    prepared: Sequence[_Prepared],
    completions: Sequence[Completion | None],
    params: AugmentParams,
    teacher: str,
) -> pa.Table:
    """The input batch plus the aug_* columns, one row per input row (completion None = never sent)."""
    pj = _params_json(params)
    rows = [_row(p, c, params, teacher, pj) for p, c in zip(prepared, completions, strict=True)]
    out = batch
    for field in AUG_SCHEMA:
        if field.name in out.column_names:  # re-augmenting augmented rows: new provenance replaces the old
            out = out.drop_columns([field.name])
        out = out.append_column(field, pa.array([r[field.name] for r in rows], field.type))
    return out


def _check_input(batch: pa.Table) -> None:
    missing = [c for c in ("doc_id", "text") if c not in batch.column_names]
    if missing:
        raise KeyError(f"augment needs columns doc_id and text; missing {missing} in {batch.column_names}")


# ---------------------------------------------------------------------------------------------------------------
# stage (b): local and openai backends


class Augmenter:
    """Kind (b): `Augmenter(params)` loads the teacher once; `__call__(batch)` returns batch + aug_* columns."""

    def __init__(self, params: AugmentParams):
        from tasks.augment.backends import LlamaCppBackend, LocalBackend, OpenAIBackend

        self.params = params
        if params.backend == "local":
            engine = local_engine(params.engine, params.model)
            if engine == "llama_cpp":
                self.backend = LlamaCppBackend(
                    params.model,
                    batch_size=params.batch_size,
                    num_threads=params.num_threads,
                    weights=params.gguf_weights,
                )
            else:
                if params.engine == "auto" and params.model == SMOLLM2:
                    _log.warning("augment: llama_cpp is not importable; the local teacher runs on transformers")
                self.backend = LocalBackend(params.model, batch_size=params.batch_size, num_threads=params.num_threads)
            self.tokenizer = self.backend.tokenizer
        elif params.backend == "openai":
            self.backend = OpenAIBackend(
                base_url=params.base_url,
                model=params.model,
                api_key_env=params.api_key_env,
                concurrency=params.concurrency,
                retries=params.retries,
                timeout_s=params.timeout_s,
                backoff_s=params.backoff_s,
            )
            self.tokenizer = load_truncation_tokenizer(params.tokenizer or params.model)
        else:
            raise ValueError(
                "backend 'vllm' runs as Ray Data's LLM processor around vllm_preprocess/vllm_postprocess "
                "(built in ray_cluster/), not as an Augmenter actor"
            )
        self.teacher = teacher_id(params)
        self.sampling = Sampling(params.temperature, params.top_p, params.max_new_tokens, tuple(params.stop))

    def __call__(self, batch: pa.Table) -> pa.Table:
        _check_input(batch)
        prepared = [
            _prepare(d, t, self.params, self.tokenizer)
            for d, t in zip(batch.column("doc_id").to_pylist(), batch.column("text").to_pylist(), strict=True)
        ]
        todo = [i for i, p in enumerate(prepared) if p.messages is not None]
        done = self.backend.generate(
            [prepared[i].messages for i in todo], self.sampling, [prepared[i].seed for i in todo]
        )
        completions: list[Completion | None] = [None] * len(prepared)
        for i, c in zip(todo, done, strict=True):
            completions[i] = c
        return parse_completions(batch, prepared, completions, self.params, self.teacher)


# ---------------------------------------------------------------------------------------------------------------
# vllm: pure halves around ray.data.llm's processor

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
    p = _prepare(row.get("doc_id"), row.get("text"), params, tokenizer)
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
    p = _Prepared(
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
    out.update(_row(p, c, params, params.model, _params_json(params)))
    return out


# ---------------------------------------------------------------------------------------------------------------
# cost accounting


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


# ---------------------------------------------------------------------------------------------------------------
# the ``augment`` stage: an actor that reuses earlier generations, or vLLM engines (kind ``llm``)

REUSE_COLUMNS: tuple[str, ...] = ()  # the executor hands the actor every column of earlier augment versions


class ReusingAugmenter:
    """The Augmenter, plus reuse: rows whose aug_key an earlier augment version of the dataset already produced
    (``history``, handed over by the executor) are copied over; the model loads only if a document needs it."""

    def __init__(self, params: AugmentParams, history: pa.Table | None = None):
        self.params = params
        self.inner: Augmenter | None = None
        self.previous = None
        if history is not None and "aug_error" in history.column_names:
            self.previous = history.filter(pc.is_null(history.column("aug_error")))

    def __call__(self, batch: pa.Table) -> pa.Table:
        todo = pending_docs(batch, self.previous, self.params)
        parts = []
        if todo.num_rows:
            if self.inner is None:
                self.inner = Augmenter(self.params)
            parts.append(self.inner(todo))
        if todo.num_rows < batch.num_rows:
            keys = aug_keys(batch, self.params)
            done_keys = pc.is_in(keys, value_set=self.previous.column("aug_key").combine_chunks())
            reused = self.previous.filter(pc.is_in(self.previous.column("aug_key"), value_set=pc.filter(keys, done_keys)))
            # exactly one reused row per key, in the batch's order
            parts.append(reused.take(pc.index_in(pc.filter(keys, done_keys), value_set=reused.column("aug_key"))))
        return pa.concat_tables(parts, promote_options="permissive")


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


def augment_summary(read, elapsed: float, resources, params: AugmentParams) -> dict:
    """Cost of the run and failed rows (kept with aug_error), in the manifest's stats."""
    rows = read(None)
    # a replica of a tensor/pipeline-parallel teacher holds several GPUs: each of them is busy for the whole run
    devices = (resources.num_gpus or 0.0) * max(1, resources.concurrency) * devices_per_replica(params)
    failed = rows.filter(pc.is_valid(rows.column("aug_error"))).num_rows
    return {"cost": augment_cost(rows, elapsed_s=elapsed, num_gpus=devices), "failed": failed}


def augment_artifact(manifest: dict) -> list[tuple[str, list[dict], str]]:
    cost = (manifest.get("stats") or {}).get("cost")
    ref = f"{manifest['dataset']}/{manifest['stage']}/{manifest['version']}"
    return [("augment-cost", [cost], f"TPT generation cost of {ref}")] if cost else []
