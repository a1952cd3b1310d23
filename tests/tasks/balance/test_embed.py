"""Embedder on real C4 documents, in-process and through a local OpenAI-compatible endpoint serving the real model."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tasks.balance.embed import Embedder, EmbedParams, bundled_model_path, embedding_is_valid

C4 = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "web" / "c4_sample" / "c4_sample.jsonl"
needs_c4 = pytest.mark.skipif(not C4.exists(), reason=f"shared C4 sample absent: {C4}")


def _c4_docs(n: int) -> list[str]:
    with C4.open() as f:
        return [json.loads(line)["text"] for _, line in zip(range(n), f, strict=False)]


@pytest.fixture(scope="module")
def embedder():
    # 128 tokens keeps the test cheap on 2 shared cores; the default (256) is exercised by the endpoint test.
    return Embedder(EmbedParams(max_seq_length=128, batch_size=4, device="cpu"))


@needs_c4
def test_embeddings_are_unit_norm_float32_fixed_size_lists_on_real_docs(embedder):
    docs = _c4_docs(12)
    out = embedder(pa.table({"doc_id": [str(i) for i in range(12)], "text": docs}))
    emb = out.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(emb) and emb.list_size == 384 and emb.value_type == pa.float32()
    vecs = np.stack(out.column("embedding").to_numpy(zero_copy_only=False))
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert out.column("doc_id").to_pylist() == [str(i) for i in range(12)]
    assert out.column("emb_error").null_count == 12
    assert embedding_is_valid(out).to_pylist() == [True] * 12


@needs_c4
def test_length_sorted_batches_are_restored_to_input_order(embedder):
    docs = _c4_docs(10)
    batched = embedder.embed_texts(docs)
    alone = np.concatenate([embedder.embed_texts([d]) for d in docs])
    assert np.allclose(batched, alone, atol=1e-5)


@needs_c4
def test_near_duplicate_is_closer_than_an_unrelated_document(embedder):
    a, b = _c4_docs(2)
    dup = a.replace(" the ", " a ", 2)
    va, vdup, vb = embedder.embed_texts([a, dup, b])
    assert float(va @ vdup) > 0.95
    assert float(va @ vb) < float(va @ vdup) - 0.2


def test_max_seq_length_truncates_what_the_model_sees():
    head = " ".join(["The committee discussed the annual budget for the city library."] * 8)
    x, y = head + " Dogs bark loudly at night.", head + " Quantum chromodynamics describes quarks."
    short = Embedder(EmbedParams(max_seq_length=16, device="cpu")).embed_texts([x, y])
    full = Embedder(EmbedParams(max_seq_length=256, device="cpu")).embed_texts([x, y])
    assert np.allclose(short[0], short[1], atol=1e-6)
    assert not np.allclose(full[0], full[1], atol=1e-3)


def test_null_and_empty_text_get_a_reason_and_a_null_embedding(embedder):
    out = embedder(pa.table({"text": ["a real sentence about cats", None, "   ", ""]}))
    assert out.num_rows == 4
    assert out.column("emb_error").to_pylist() == [None, "emb_null_text", "emb_empty_text", "emb_empty_text"]
    assert out.column("embedding").null_count == 3
    with pytest.raises(ValueError, match="'text' column"):
        embedder(pa.table({"body": ["x"]}))


class _ModelServer:
    """A tiny OpenAI-compatible /v1/embeddings server computing vectors with the real bundled model (unnormalized)."""

    def __init__(self, fail_first: int = 0):
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(bundled_model_path(), device="cpu", local_files_only=True)
        state = {"fail": fail_first, "auth": [], "requests": 0}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                state["auth"].append(self.headers.get("Authorization"))
                state["requests"] += 1
                if state["fail"] > 0:
                    state["fail"] -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                if self.path != "/v1/embeddings" or body.get("model") != "minilm":
                    self.send_response(404)
                    self.end_headers()
                    return
                vecs = model.encode(body["input"], normalize_embeddings=False, convert_to_numpy=True)
                # shuffled order: clients must sort by `index`, as the OpenAI API allows
                data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vecs)][::-1]
                raw = json.dumps({"object": "list", "data": data, "model": "minilm"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.state = state
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def server():
    s = _ModelServer()
    yield s
    s.close()


@needs_c4
def test_endpoint_path_matches_the_in_process_model_and_sends_the_key_from_env(server, monkeypatch):
    monkeypatch.setenv("QUARRY_TEST_EMBED_KEY", "sk-test-123")
    params = EmbedParams(base_url=server.url, model="minilm", api_key_env="QUARRY_TEST_EMBED_KEY", batch_size=3)
    assert "sk-test-123" not in repr(params)
    remote = Embedder(params)
    assert remote.dim == 384
    docs = _c4_docs(6)
    out = remote(pa.table({"text": docs + [None]}))
    got = np.stack(out.column("embedding").to_numpy(zero_copy_only=False)[:6])
    local = Embedder(EmbedParams(device="cpu")).embed_texts(docs)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.allclose(got, local, atol=1e-4)
    assert out.column("emb_error").to_pylist()[-1] == "emb_null_text"
    assert set(server.state["auth"]) == {"Bearer sk-test-123"}


def test_endpoint_retries_transient_errors():
    s = _ModelServer(fail_first=2)
    try:
        e = Embedder(EmbedParams(base_url=s.url, model="minilm", api_key_env="", max_retries=3))
        assert e.embed_texts(["hello world"]).shape == (1, 384)
        assert s.state["requests"] == 4 and s.state["auth"][0] is None
    finally:
        s.close()


def test_endpoint_params_need_a_model_name():
    with pytest.raises(ValueError, match="model"):
        EmbedParams(base_url="http://localhost:1/v1")


@pytest.mark.gpu
def test_auto_device_uses_cuda_when_present():
    e = Embedder(EmbedParams())
    assert e.device == "cuda"
    assert np.allclose(np.linalg.norm(e.embed_texts(["gpu check"]), axis=1), 1.0, atol=1e-3)
