"""A small OpenAI-compatible HTTP server for the bundled teacher (SmolLM2-135M-Instruct via tasks.llm_backends).

Serves POST /v1/chat/completions, POST /v1/completions, GET /v1/models and GET /health on the stdlib's threaded
HTTP server. Concurrent requests are micro-batched: the first waiting request opens a short window (`--window-ms`)
in which up to `--max-batch` requests with the same sampling parameters are generated together (left padding), which
is what makes client-side concurrency pay off. Used by the openai backend's tests and for local debugging:

    python -m tasks.openai_server --port 8000            # prints "listening on http://127.0.0.1:8000" when ready
    curl -s localhost:8000/v1/chat/completions -d '{"model":"smollm2","messages":[{"role":"user","content":"Hi"}]}'

Authentication is off unless `--api-key-env NAME` names an environment variable holding the key every request
must send as `Authorization: Bearer <key>` (the key itself never appears on the command line). Keep it on loopback.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tasks.llm_backends import SMOLLM2, Completion, LocalBackend, Sampling

_MAX_BODY = 8 << 20  # bytes; a 2k-token document is ~10 kB


class BadRequest(ValueError):
    """A client error answered with HTTP 400."""


@dataclass
class _Job:
    prompt: str
    sampling: Sampling
    seed: int
    done: threading.Event = field(default_factory=threading.Event)
    result: Completion | None = None


class MicroBatcher:
    """One generation thread; requests arriving within `window_s` of each other are generated as one batch."""

    def __init__(self, backend: LocalBackend, *, max_batch: int = 8, window_s: float = 0.01):
        self.backend, self.max_batch, self.window_s = backend, max_batch, window_s
        self._q: queue.Queue[_Job] = queue.Queue()
        threading.Thread(target=self._loop, daemon=True, name="micro-batcher").start()

    def submit(self, prompt: str, sampling: Sampling, seed: int) -> Completion:
        job = _Job(prompt, sampling, seed)
        self._q.put(job)
        job.done.wait()
        return job.result  # type: ignore[return-value]

    def _loop(self) -> None:
        while True:
            jobs = [self._q.get()]
            deadline = time.monotonic() + self.window_s
            while len(jobs) < self.max_batch:
                try:
                    jobs.append(self._q.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            groups: dict[Sampling, list[_Job]] = {}
            for j in jobs:
                groups.setdefault(j.sampling, []).append(j)
            for sampling, group in groups.items():
                try:
                    results = self.backend.generate_prompts(
                        [j.prompt for j in group], sampling, [j.seed for j in group]
                    )
                except Exception as e:  # never leave a client hanging
                    results = [Completion(None, "error", None, None, 0.0, f"{type(e).__name__}: {e}")] * len(group)
                for j, r in zip(group, results, strict=True):
                    j.result = r
                    j.done.set()


def _sampling(body: dict) -> tuple[Sampling, int]:
    try:
        temperature = float(body.get("temperature", 1.0))
        top_p = float(body.get("top_p", 1.0))
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        seed = int(body.get("seed") or 0)
    except (TypeError, ValueError) as e:
        raise BadRequest(f"bad sampling parameter: {e}") from e
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    if temperature < 0 or not 0 < top_p <= 1 or max_tokens < 1 or not all(isinstance(s, str) for s in stop):
        raise BadRequest("need temperature >= 0, 0 < top_p <= 1, max_tokens >= 1, stop: str | list[str]")
    if int(body.get("n", 1)) != 1:
        raise BadRequest("only n=1 is supported")
    return Sampling(temperature, top_p, max_tokens, stop), seed


def _cut_at_stop(text: str | None, stop: tuple[str, ...]) -> str | None:
    """OpenAI semantics: the returned text excludes the stop sequence and anything after it."""
    if text is None:
        return None
    cuts = [text.index(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text


class _Handler(BaseHTTPRequestHandler):
    server_version = "quarry-openai/1"
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections

    def log_message(self, fmt, *args):  # quiet unless --verbose
        if self.server.verbose:  # type: ignore[attr-defined]
            super().log_message(fmt, *args)

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._send(status, {"error": {"message": message, "type": kind}})

    def do_GET(self):
        if self.path in ("/health", "/v1/health"):
            self._send(200, {"status": "ok"})
        elif self.path == "/v1/models":
            name = self.server.model_name  # type: ignore[attr-defined]
            self._send(200, {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "quarry"}]})
        else:
            self._error(404, f"no route {self.path}")

    def _authorized(self) -> bool:
        import hmac

        key = self.server.api_key  # type: ignore[attr-defined]
        if key is None:
            return True
        got = self.headers.get("Authorization") or ""
        if hmac.compare_digest(got.encode(), f"Bearer {key}".encode()):
            return True
        self._error(401, "missing or wrong API key", "authentication_error")  # never echo what was sent
        return False

    def do_POST(self):
        if not self._authorized():
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self._error(413, f"request body over {_MAX_BODY} bytes")
            return
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise BadRequest("body must be a JSON object")
            if self.path == "/v1/chat/completions":
                self._chat(body)
            elif self.path == "/v1/completions":
                self._completions(body)
            else:
                self._error(404, f"no route {self.path}")
        except (BadRequest, json.JSONDecodeError) as e:
            self._error(400, str(e))

    def _chat(self, body: dict) -> None:
        messages = body.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in messages)
        ):
            raise BadRequest("messages must be a non-empty list of {role, content: str}")
        sampling, seed = _sampling(body)
        prompt = self.server.batcher.backend.chat_prompts([messages])[0]  # type: ignore[attr-defined]
        c = self.server.batcher.submit(prompt, sampling, seed)  # type: ignore[attr-defined]
        if c.finish_reason == "error":
            self._error(500, c.error or "generation failed", "server_error")
            return
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": _cut_at_stop(c.text, sampling.stop)},
            "finish_reason": c.finish_reason,
        }
        self._send(200, self._envelope("chat.completion", [choice], [c]))

    def _completions(self, body: dict) -> None:
        prompts = body.get("prompt")
        prompts = [prompts] if isinstance(prompts, str) else prompts
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise BadRequest("prompt must be a string or a non-empty list of strings")
        sampling, seed = _sampling(body)
        results: list[Completion | None] = [None] * len(prompts)

        def run(i: int) -> None:
            results[i] = self.server.batcher.submit(prompts[i], sampling, seed + i)  # type: ignore[attr-defined]

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        failed = [r for r in results if r is None or r.finish_reason == "error"]
        if failed:
            self._error(500, failed[0].error if failed[0] else "generation failed", "server_error")
            return
        choices = [
            {"index": i, "text": _cut_at_stop(r.text, sampling.stop), "finish_reason": r.finish_reason}
            for i, r in enumerate(results)
        ]
        self._send(200, self._envelope("text_completion", choices, results))

    def _envelope(self, obj: str, choices: list, comps: list) -> dict:
        p = sum(c.prompt_tokens or 0 for c in comps)
        g = sum(c.completion_tokens or 0 for c in comps)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": obj,
            "created": int(time.time()),
            "model": self.server.model_name,  # type: ignore[attr-defined]
            "choices": choices,
            "usage": {"prompt_tokens": p, "completion_tokens": g, "total_tokens": p + g},
        }


def make_server(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    model: str = SMOLLM2,
    max_batch: int = 8,
    window_ms: float = 10.0,
    num_threads: int | None = None,
    verbose: bool = False,
    api_key: str | None = None,
) -> ThreadingHTTPServer:
    """A ready (model loaded) server; call serve_forever() on it. port=0 picks a free port (see server_address)."""
    backend = LocalBackend(model, batch_size=max_batch, num_threads=num_threads)
    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    server.batcher = MicroBatcher(backend, max_batch=max_batch, window_s=window_ms / 1000)  # type: ignore[attr-defined]
    server.model_name = model  # type: ignore[attr-defined]
    server.verbose = verbose  # type: ignore[attr-defined]
    server.api_key = api_key  # type: ignore[attr-defined]
    return server


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1", help="bind address (keep loopback)")
    ap.add_argument("--port", type=int, default=8000, help="0 = any free port (printed on the ready line)")
    ap.add_argument("--model", default=SMOLLM2, help="'smollm2' (bundled GGUF) or a local HF model directory")
    ap.add_argument("--max-batch", type=int, default=8, help="requests generated together")
    ap.add_argument("--window-ms", type=float, default=10.0, help="how long the first request waits for company")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--verbose", action="store_true", help="log every request")
    ap.add_argument("--api-key-env", default=None, help="env var holding the key clients must send (default: no auth)")
    args = ap.parse_args(argv)
    api_key = None
    if args.api_key_env:
        import os

        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            ap.error(f"--api-key-env {args.api_key_env}: that environment variable is empty or unset")
    server = make_server(
        host=args.host,
        port=args.port,
        model=args.model,
        max_batch=args.max_batch,
        window_ms=args.window_ms,
        num_threads=args.threads,
        verbose=args.verbose,
        api_key=api_key,
    )
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}", flush=True)  # the ready line tests and scripts wait for
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
