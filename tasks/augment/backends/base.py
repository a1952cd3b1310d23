"""What every teacher engine shares: the Sampling/Completion contract the augment stage parses, the `Backend`
protocol, content hashing of GGUF files (cache keys and provenance), and the choice of the `local` engine with the
teacher id it records.

Engines, one module each (heavy libraries are imported inside them, only when an engine is built):
  * `llama_cpp_backend.LlamaCppBackend` (the `local` default): llama.cpp over the bundled GGUF.
  * `transformers_backend.LocalBackend`: transformers on CPU, the fallback where llama_cpp is not importable.
  * `openai_backend.OpenAIBackend`: any OpenAI-compatible `/v1/chat/completions` endpoint.

The vLLM path goes through Ray Data's LLM processor (see `tasks.augment.vllm_hooks`), so it has no backend class.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tasks.common.assets import SMOLLM2, smollm2_gguf_path
from tasks.common.tempfiles import cache_root

LOCAL_ENGINES = ("auto", "llama_cpp", "transformers")
# How llama.cpp runs a GGUF's weights: "as_is" (the file's own quantization), "bf16" (a one-time bf16 re-encoding of
# those weights), "auto" (bf16 where the CPU has native bf16 dot products, see llama_cpp_backend.llama_weights).
GGUF_WEIGHTS = ("auto", "as_is", "bf16")


@dataclass(frozen=True, slots=True)
class Sampling:
    """Engine-neutral sampling parameters of one generate call."""

    temperature: float
    top_p: float
    max_new_tokens: int
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Completion:
    """One generation. finish_reason is "stop", "length" or "error" (then `error` says why and text is None)."""

    text: str | None
    finish_reason: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float
    error: str | None = None


class ChatTemplated:
    """Local engines render chat messages with the model's own chat template (ending with the assistant turn
    header), then complete the prompt strings: the transformers and llama.cpp backends share this front half."""

    tokenizer: Any

    def chat_prompts(self, messages_list: Sequence[list[dict]]) -> list[str]:
        """Chat-templated prompt strings, ending with the assistant turn header."""
        return [
            self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages_list
        ]

    def generate(
        self, messages_list: Sequence[list[dict]], sampling: Sampling, seeds: Sequence[int]
    ) -> list[Completion]:
        """One completion per message list, in input order."""
        return self.generate_prompts(self.chat_prompts(messages_list), sampling, seeds)

    def generate_prompts(self, prompts: Sequence[str], sampling: Sampling, seeds: Sequence[int]) -> list[Completion]:
        raise NotImplementedError


class Backend(Protocol):
    """What the Augmenter needs of an engine: its provenance id and one completion per message list, in input order
    (a failure is a Completion with finish_reason "error", never an exception, so every document keeps its row)."""

    teacher: str

    def generate(
        self, messages_list: Sequence[list[dict]], sampling: Sampling, seeds: Sequence[int]
    ) -> list[Completion]: ...


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file, memoised per (path, size, mtime) so a 100 MB GGUF is hashed once per process."""
    st = path.stat()
    return _file_sha256(str(path), st.st_size, st.st_mtime_ns)


def model_cache_dir(gguf: Path) -> Path:
    """Cache folder of a GGUF's dequantized weights, keyed by the GGUF's content hash."""
    return cache_root() / "models" / f"{gguf.stem}-{file_sha256(gguf)[:16]}"


def local_engine(engine: str = "auto", model: str = SMOLLM2) -> str:
    """The engine the `local` backend uses: llama.cpp for a GGUF when llama_cpp is importable, else transformers."""
    if engine not in LOCAL_ENGINES:
        raise ValueError(f"local engine must be one of {LOCAL_ENGINES}, got {engine!r}")
    if engine != "auto":
        return engine
    if model != SMOLLM2 and not model.endswith(".gguf"):
        return "transformers"  # a Hugging Face model dir: llama.cpp reads only GGUF
    return "llama_cpp" if importlib.util.find_spec("llama_cpp") is not None else "transformers"


def _engine_version(engine: str) -> str:
    dist = {"llama_cpp": "llama_cpp_python", "transformers": "transformers"}[engine]
    try:
        return f"{dist.replace('_', '-')} {importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return dist.replace("_", "-")


def local_teacher_id(model: str = SMOLLM2, engine: str = "transformers", weights: str = "as_is") -> str:
    """Provenance id of a local teacher: GGUF file name + content hash (or the model directory), how llama.cpp ran its
    weights (" as bf16"), and the engine with its version: engines and weight encodings differ in numerics, so the same
    seed gives another text on another engine."""
    if model == SMOLLM2:
        gguf = smollm2_gguf_path()
        base = f"HuggingFaceTB/SmolLM2-135M-Instruct:{gguf.name}@sha256:{file_sha256(gguf)[:16]}"
    elif model.endswith(".gguf"):
        gguf = Path(model).resolve()
        base = f"{gguf.name}@sha256:{file_sha256(gguf)[:16]}"
    else:
        base = str(Path(model).resolve())
    if engine == "llama_cpp" and weights == "bf16":
        base += " as bf16"
    return f"{base} via {_engine_version(engine)}"
