"""augment's openai backend over real HTTP: llama.cpp's own OpenAI-compatible server (llama_cpp.server) with the real
bundled model and an API key, plus tiny loopback servers that fail, throttle or stall on purpose to exercise retries,
timeouts and the concurrency limit."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pytest

from tasks.augment.augmenter import Augmenter
from tasks.augment.params import AugmentParams
from tasks.augment.prompts import load_truncation_tokenizer
from tasks.augment.rows import AUG_SCHEMA, aug_keys, build_messages
from tests.conftest import SHARED_DATA, openai_server

C4 = SHARED_DATA / "web" / "c4_sample" / "c4_sample.jsonl"
SECRET = "sk-test-DO-NOT-LEAK-4f9a2c"
KEY_ENV = "QUARRY_TEST_TEACHER_KEY"


@pytest.fixture(scope="module")
def server_url():
    """One engine server for the module; it requires SECRET, so the real-model test also checks key forwarding."""
    with openai_server("--api-key-env", KEY_ENV, env={KEY_ENV: SECRET}) as (url, logs):
        yield url
    assert SECRET not in logs["stderr"]


def _c4_docs(n: int) -> pa.Table:
    if not C4.is_file():
        pytest.skip(f"shared data not found at {C4}")
    texts = [json.loads(line)["text"] for _, line in zip(range(n), C4.open(encoding="utf-8"), strict=False)]
    return pa.table({"doc_id": [f"c4-{i}" for i in range(n)], "text": texts})


def _params(base_url: str, **kw) -> AugmentParams:
    return AugmentParams(backend="openai", base_url=base_url, model="smollm2", **kw)


# ---------------------------------------------------------------- real model over HTTP


def test_openai_backend_augments_real_documents_over_http(server_url, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    params = _params(server_url, max_new_tokens=16, concurrency=4, max_input_tokens=256, api_key_env=KEY_ENV)
    docs = _c4_docs(4)
    out = Augmenter(params)(docs)
    tok = load_truncation_tokenizer("smollm2")
    assert out.num_rows == 4 and out.select(AUG_SCHEMA.names).schema == AUG_SCHEMA
    assert out.column("aug_key").to_pylist() == aug_keys(docs, params).to_pylist()
    for r in out.to_pylist():
        assert r["aug_error"] is None, r["aug_error"]
        assert r["aug_teacher"] == "smollm2" and r["aug_source_id"] == r["doc_id"]
        assert r["aug_finish_reason"] in ("stop", "length") and 1 <= r["aug_completion_tokens"] <= 16
        # usage.prompt_tokens from the server = the chat-templated prompt of the truncated document
        doc = r["text"][: len(r["aug_text"]) - len(r["aug_thinking"]) - len("\n\n<think>\n\n</think>")]
        assert r["aug_text"].startswith(doc) and r["aug_document_tokens"] <= 256
        chat = tok.apply_chat_template(build_messages(doc, params, seed=r["aug_seed"]), tokenize=False,
                                       add_generation_prompt=True)  # fmt: skip
        assert r["aug_prompt_tokens"] == len(tok(chat, add_special_tokens=False)["input_ids"])
        assert r["aug_latency_s"] > 0


def test_without_the_key_the_engine_server_refuses_and_the_row_says_so(server_url, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    out = Augmenter(_params(server_url, retries=3, backoff_s=0.01, api_key_env=KEY_ENV))(ONE_DOC).to_pylist()[0]
    assert "http 401" in out["aug_error"] and "(1 attempts)" in out["aug_error"]  # not retried
    assert out["aug_text"] is None and out["aug_finish_reason"] == "error"


def test_engine_server_answers_bad_requests_with_an_error_and_honours_max_tokens(server_url):
    import httpx

    auth = {"Authorization": f"Bearer {SECRET}"}
    r = httpx.post(server_url + "/chat/completions", json={"model": "smollm2", "messages": "hi"}, headers=auth,
                   timeout=30)  # fmt: skip
    # llama_cpp.server's error handler answers a validation error with 500 and an OpenAI-style error body
    assert r.status_code >= 400 and r.json()["error"]["message"]
    r = httpx.post(server_url + "/completions", headers=auth, timeout=60,
                   json={"model": "smollm2", "prompt": "The sky is", "max_tokens": 3, "temperature": 0})  # fmt: skip
    body = r.json()
    assert r.status_code == 200 and body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


# ---------------------------------------------------------------- fault-injecting loopback servers

_OK = {
    "id": "x",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Reasoning."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13},
}


class _Scripted(ThreadingHTTPServer):
    """Answers request k with script[k] (status, delay_s, extra headers); later requests get 200 _OK."""

    daemon_threads = True

    def __init__(self, script, delay_s: float = 0.0):
        self.script, self.delay_s = list(script), delay_s
        self.lock = threading.Lock()
        self.seen_auth: list[str | None] = []
        self.in_flight = self.max_in_flight = 0
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _ScriptedHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        s: _Scripted = self.server  # type: ignore[assignment]
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with s.lock:
            k = len(s.seen_auth)
            s.seen_auth.append(self.headers.get("Authorization"))
            s.in_flight += 1
            s.max_in_flight = max(s.max_in_flight, s.in_flight)
        status, delay, headers = s.script[k] if k < len(s.script) else (200, s.delay_s, {})
        time.sleep(delay)
        # A careless server echoing the request's credentials: the client must redact them from aug_error.
        body = (
            _OK
            if status == 200
            else {"error": {"message": f"boom, your header was {self.headers.get('Authorization')}"}}
        )
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            for h, v in headers.items():
                self.send_header(h, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up
            pass
        finally:
            with s.lock:
                s.in_flight -= 1


@pytest.fixture
def scripted():
    servers = []

    def make(script=(), delay_s=0.0):
        servers.append(_Scripted(script, delay_s))
        return servers[-1]

    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


ONE_DOC = pa.table({"doc_id": ["d"], "text": ["Photosynthesis turns light into chemical energy."]})


def test_retries_on_429_and_5xx_until_the_server_recovers(scripted):
    srv = scripted([(503, 0, {}), (429, 0, {"Retry-After": "0"}), (500, 0, {})])
    out = Augmenter(_params(srv.url, retries=3, backoff_s=0.01))(ONE_DOC).to_pylist()[0]
    assert len(srv.seen_auth) == 4
    assert out["aug_error"] is None and out["aug_thinking"] == "Reasoning." and out["aug_finish_reason"] == "stop"
    assert (out["aug_prompt_tokens"], out["aug_completion_tokens"]) == (11, 2)


def test_gives_up_after_the_retry_budget_and_keeps_the_row(scripted):
    srv = scripted([(503, 0, {})] * 10)
    out = Augmenter(_params(srv.url, retries=2, backoff_s=0.01))(ONE_DOC).to_pylist()[0]
    assert len(srv.seen_auth) == 3
    assert out["aug_finish_reason"] == "error" and "http 503" in out["aug_error"] and "3 attempts" in out["aug_error"]
    assert out["aug_text"] is None and out["aug_source_id"] == "d" and out["aug_key"]


def test_client_errors_are_not_retried(scripted):
    srv = scripted([(400, 0, {})] * 5)
    out = Augmenter(_params(srv.url, retries=4, backoff_s=0.01))(ONE_DOC).to_pylist()[0]
    assert len(srv.seen_auth) == 1 and "http 400" in out["aug_error"]


def test_request_timeout_is_retried_then_reported(scripted):
    srv = scripted([(200, 2.0, {}), (200, 2.0, {})])
    out = Augmenter(_params(srv.url, retries=1, timeout_s=0.3, backoff_s=0.01))(ONE_DOC).to_pylist()[0]
    assert len(srv.seen_auth) == 2 and out["aug_error"].startswith("timeout")
    assert out["aug_latency_s"] < 2.0


def test_concurrency_limit_bounds_requests_in_flight(scripted):
    srv = scripted(delay_s=0.5)
    docs = pa.table({"doc_id": [f"d{i}" for i in range(8)], "text": [f"Fact number {i}." for i in range(8)]})
    out = Augmenter(_params(srv.url, concurrency=3))(docs)
    assert srv.max_in_flight == 3 and len(srv.seen_auth) == 8
    assert out.column("aug_error").null_count == 8


def test_api_key_is_sent_but_never_appears_in_any_output_row(scripted, monkeypatch):
    monkeypatch.setenv("QUARRY_TEST_TEACHER_KEY", SECRET)
    srv = scripted([(500, 0, {})] * 10)  # every attempt of both docs fails
    params = _params(srv.url, retries=1, backoff_s=0.01, api_key_env="QUARRY_TEST_TEACHER_KEY")
    out = Augmenter(params)(pa.concat_tables([ONE_DOC, pa.table({"doc_id": ["e"], "text": ["Ice floats."]})]))
    assert srv.seen_auth[0] == f"Bearer {SECRET}"  # the key did reach the server...
    assert len(srv.seen_auth) == 4 and out.column("aug_error").null_count == 0
    assert all("***" in e for e in out.column("aug_error").to_pylist())  # ...which echoed it back in its errors
    dump = json.dumps(out.to_pylist()) + repr(params)
    assert SECRET not in dump
