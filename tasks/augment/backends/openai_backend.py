"""`OpenAIBackend`: any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM's or llama.cpp's server, hosted APIs),
with a thread-pool concurrency limit, retries with exponential backoff on 429/5xx/timeouts and a per-request timeout.
The API key is read from the environment variable *named* by the caller; everything the server sends back (error
bodies, exception messages, finish reasons, even the generated text) passes `tasks.common.secrets.Redactor`, which
masks the key in any encoding and any 6+-character fragment of it, *before* anything is truncated.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import random
import time
from collections.abc import Sequence

from tasks.augment.backends.base import Completion, Sampling
from tasks.common.secrets import Redactor, guard_logs

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
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        self._redact = Redactor(key)
        guard_logs(self._redact)  # httpx/httpcore log reason phrases and bad header lines: server text
        headers = {"Authorization": f"Bearer {key}"} if key else {}
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
            except httpx.HTTPError as e:  # transport, decoding, redirects: the message may quote the server
                error = f"transport: {type(e).__name__}: {self._redact(str(e))[:300]}"
            else:
                if r.status_code == 200:
                    return self._parse(r, time.perf_counter() - t0)
                error = f"http {r.status_code}: {self._redact(r.text)[:300]}"  # redact first: a cut key is no key
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
            if text is not None and not isinstance(text, str):
                raise TypeError(f"content is a {type(text).__name__}, not a string")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            return Completion(
                None, "error", None, None, latency, f"bad response: {self._redact(f'{e}: {r.text}')[:300]}"
            )
        text = self._redact(text)  # a hostile server may echo the key as the text
        # token counts go to int64 columns: anything else would fail there with the value (server text) quoted
        prompt_tokens, completion_tokens = (_count(usage, k) for k in ("prompt_tokens", "completion_tokens"))
        if reason not in ("stop", "length"):  # content_filter, tool_calls, ...: not a thinking trace
            return Completion(
                text,
                "error",
                prompt_tokens,
                completion_tokens,
                latency,
                f"finish_reason {self._redact(str(reason))[:100]!r}",
            )
        return Completion(text, reason, prompt_tokens, completion_tokens, latency)


def _count(usage, key: str) -> int | None:
    v = usage.get(key) if isinstance(usage, dict) else None
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**62 else None
