"""The augment stage's teacher engines behind one `generate(messages_list, sampling, seeds)` interface (see base.py).

Re-exported here so callers name `tasks.augment.backends.X` without knowing which engine module holds it; the engine
modules import their libraries (llama_cpp, torch/transformers, httpx) only when an engine is built.
"""

from tasks.augment.backends.base import (
    GGUF_WEIGHTS,
    LOCAL_ENGINES,
    Backend,
    Completion,
    Sampling,
    file_sha256,
    local_engine,
    local_teacher_id,
    model_cache_dir,
)
from tasks.augment.backends.llama_cpp_backend import LlamaCppBackend, amx_safe, gguf_for_llama, llama_weights
from tasks.augment.backends.openai_backend import OpenAIBackend
from tasks.augment.backends.transformers_backend import LocalBackend, load_local_model

__all__ = [
    "GGUF_WEIGHTS",
    "LOCAL_ENGINES",
    "Backend",
    "Completion",
    "LlamaCppBackend",
    "LocalBackend",
    "OpenAIBackend",
    "Sampling",
    "amx_safe",
    "file_sha256",
    "gguf_for_llama",
    "llama_weights",
    "load_local_model",
    "local_engine",
    "local_teacher_id",
    "model_cache_dir",
]
