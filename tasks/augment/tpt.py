"""Thinking-augmented pre-training data (TPT, Wang et al. 2025, arXiv:2509.20186): document d -> sample [d ; <think> t </think>].

A teacher LLM reads each document (truncated to `max_input_tokens` of the teacher's tokenizer) inside a versioned
prompt template (tasks/augment/templates/tpt_*.txt: the paper's template verbatim, and the "random focus" ablation) and
writes a thinking trajectory t. Every input document gives exactly one output row carrying its provenance (teacher,
template, sampling parameters, seed, token counts, finish reason, latency); failed or empty generations keep their
row with `aug_error` set and `aug_text` null. `aug_key` hashes (the text read, teacher, template, generation parameters) so
the engine can skip documents already augmented the same way (`pending_docs`).

The stage's entry module: the registry and callers import from here; each room lives in its own module.
  * prompts.py: template files, prompt filling, truncation, per-document seeds.
  * params.py: `AugmentParams`, checked at config time.
  * rows.py: one document in, one row out: messages, completion parsing, AUG_SCHEMA, `aug_key`, `pending_docs`.
  * augmenter.py: `Augmenter(params)` (kind (b), the `local` and `openai` backends) and `ReusingAugmenter`.
  * vllm_hooks.py: `vllm_preprocess` / `vllm_postprocess`, the pure halves around Ray Data's vLLM processor
    (`ray.data.llm.build_processor`, built in ray_cluster/), and `route` / `vllm_hooks` for the executor.
  * cost.py: `augment_cost(rows, elapsed_s=..., num_gpus=...)`, the manifest's summary and artifact.
  * backends/: the teacher engines (llama.cpp, transformers, an OpenAI-compatible endpoint).

    python -c "import pyarrow as pa; from tasks.augment.tpt import *; \\
      print(Augmenter(AugmentParams(max_new_tokens=32))(pa.table({'doc_id': ['a'], 'text': ['Water boils at 100 C.']})))"
"""

from tasks.augment.augmenter import REUSE_COLUMNS, Augmenter, ReusingAugmenter
from tasks.augment.cost import augment_artifact, augment_cost, augment_summary
from tasks.augment.params import BACKENDS, AugmentParams, devices_per_replica
from tasks.augment.prompts import (
    CONTEXT_SLOT,
    FOCUS_MARKER,
    build_prompt,
    doc_seed,
    load_template,
    load_truncation_tokenizer,
    template_sha,
    truncate_document,
)
from tasks.augment.rows import (
    AUG_SCHEMA,
    aug_key,
    aug_keys,
    build_messages,
    compose_sample,
    generation_params,
    parse_completion,
    parse_completions,
    pending_docs,
    teacher_id,
)
from tasks.augment.vllm_hooks import route, vllm_hooks, vllm_postprocess, vllm_preprocess, vllm_sampling_params

__all__ = [
    "AUG_SCHEMA",
    "BACKENDS",
    "CONTEXT_SLOT",
    "FOCUS_MARKER",
    "REUSE_COLUMNS",
    "AugmentParams",
    "Augmenter",
    "ReusingAugmenter",
    "aug_key",
    "aug_keys",
    "augment_artifact",
    "augment_cost",
    "augment_summary",
    "build_messages",
    "build_prompt",
    "compose_sample",
    "devices_per_replica",
    "doc_seed",
    "generation_params",
    "load_template",
    "load_truncation_tokenizer",
    "parse_completion",
    "parse_completions",
    "pending_docs",
    "route",
    "teacher_id",
    "template_sha",
    "truncate_document",
    "vllm_hooks",
    "vllm_postprocess",
    "vllm_preprocess",
    "vllm_sampling_params",
]
