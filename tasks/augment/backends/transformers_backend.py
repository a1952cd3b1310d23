"""`LocalBackend`: transformers on CPU, batched generation with left padding; the fallback where llama_cpp is not
importable, and the engine for a local Hugging Face model dir. Dequantizing the GGUF takes 20-40 s on 2 cores, so the
dequantized float32 weights + tokenizer are saved once under `$QUARRY_CACHE/models/<gguf stem>-<sha256[:16]>/` and
later loads read that folder (~1 s); vLLM's CPU engine loads the same folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tasks.augment.backends.base import (
    ChatTemplated,
    Completion,
    Sampling,
    file_sha256,
    local_teacher_id,
    model_cache_dir,
)
from tasks.common.assets import SMOLLM2, smollm2_gguf_path

_CACHE_MARKER = "quarry_model.json"  # written last: its presence means the cached folder is complete


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


class LocalBackend(ChatTemplated):
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
