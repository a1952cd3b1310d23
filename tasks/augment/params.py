"""`AugmentParams`: teacher, prompt, sampling and transport settings of the augment stage, checked at config time (a
bad template, engine or credential-bearing URL fails before any model loads)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from tasks.augment.backends.base import GGUF_WEIGHTS, LOCAL_ENGINES
from tasks.augment.prompts import load_template
from tasks.common.assets import SMOLLM2

BACKENDS = ("local", "openai", "vllm")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_URL_CREDENTIALS = re.compile(r"://[^/@\s]{0,256}:[^/@\s]{0,1024}@")  # scheme://user:password@host (bounded)


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

