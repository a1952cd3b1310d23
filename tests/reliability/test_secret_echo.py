"""An endpoint that quotes the API key back, in every encoding it might use, never gets it into a committed row.

The real augment stage (registry + executor + storage, the `openai` teacher over real HTTP) runs against a stdlib HTTP
server on loopback that answers each request with one hostile form: the key from character 283 of a 401 body (the
backend used to cut the body to 300 characters *before* redacting, committing 45 of 47 key characters), JSON-escaped
(`\\/`), `\\u`-escaped, percent-encoded, base64 of `user:key` and of the key, upper-case hex, echoed as the generated
text and the finish reason, as a token count, in a body that is not JSON, and in a malformed HTTP status line. Then
every file under the root (raw bytes and every Parquet value decoded), stdout/stderr and the log records are searched
for any 6-character fragment of the key and for 6-key-character fragments of each encoding.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest

from tasks.common.secrets import Redactor

KEY_ENV = "QUARRY_SECRET_ECHO_TEST_KEY"
# '/', '+', '=' and mixed case: JSON may escape '/', URLs percent-encode all three, hex has two cases
KEY = "sk-echo/Q9v+Zt2Lw7=Xk4Rb8Nm1Hs6Jd3Fp0Gc5Yq-EchoMe"
USER = "quarry"


def _b64_core(data: bytes) -> str:
    """base64 of `data` minus its last 4 characters (which depend on what follows or on padding)."""
    return base64.b64encode(data).decode()[:-4]


# name -> (status, content type, body) or a raw-bytes writer; each request gets the next one
CASES: dict[str, object] = {
    "cut_at_300": (401, "text/plain", "x" * 260 + f" Authorization: Bearer {KEY} rejected"),
    "json_slash_escaped": (401, "application/json",
                           '{"error": {"message": "bad header Bearer ' + KEY.replace("/", "\\/") + '"}}'),
    "json_u_escaped": (401, "application/json",
                       '{"error": "' + "".join(f"\\u{ord(c):04x}" for c in f"Bearer {KEY}") + '"}'),
    "percent_encoded": (400, "text/plain", "redirect=/login?key=" + urllib.parse.quote(KEY, safe="")),
    "percent_every_byte": (400, "text/plain", "k=" + "".join(f"%{b:02X}" for b in KEY.encode())),
    "basic_user_key": (403, "text/plain",
                       "Authorization: Basic " + base64.b64encode(f"{USER}:{KEY}".encode()).decode()),
    "base64_key": (403, "text/plain", "token b64=" + base64.b64encode(KEY.encode()).decode()),
    "hex_upper": (400, "text/plain", "dump: " + KEY.encode().hex().upper()),
    "not_json_200": (200, "application/json", "<html>oops " + KEY + "</html>"),
    "echo_as_text": (200, "application/json", json.dumps({
        "choices": [{"message": {"content": f"<think>the key is {KEY}</think> done"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4}})),
    "reason_phrase": (401, "text/plain", "no"),  # served with the key as the status line's reason phrase
    "echo_as_reason": (200, "application/json", json.dumps({
        "choices": [{"message": {"content": "ok"}, "finish_reason": KEY}], "usage": {"prompt_tokens": KEY}})),
    "bad_status_line": b"HTTP/1.1 200 " + KEY.encode() + b"\r\nX-Key " + KEY.encode() + b"\r\n\r\n",
}


def _forbidden_fragments() -> set[str]:
    """Written independently of the redactor: what may not appear anywhere once the run is over."""
    frags = {KEY[i : i + 6] for i in range(len(KEY) - 5)}  # any 6 characters of the raw key
    for enc, per in ((KEY.replace("/", "\\/"), 1), (urllib.parse.quote(KEY, safe=""), 1),
                     (KEY.encode().hex(), 2), (KEY.encode().hex().upper(), 2),
                     ("".join(f"\\u{ord(c):04x}" for c in KEY), 6)):
        n = 6 * per
        frags |= {enc[i : i + n] for i in range(len(enc) - n + 1)}
    for b64 in (_b64_core(f"{USER}:{KEY}".encode())[8:], _b64_core(KEY.encode())):
        frags |= {b64[i : i + 8] for i in range(len(b64) - 7)}  # 8 base64 characters = 6 bytes
    return frags


class _Echo(BaseHTTPRequestHandler):
    served: list[str] = []
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        assert self.headers.get("authorization") == f"Bearer {KEY}"  # the key really went out
        with self.lock:
            name = list(CASES)[len(self.served) % len(CASES)]
            self.served.append(name)
        case = CASES[name]
        if isinstance(case, bytes):
            self.wfile.write(case)
            self.close_connection = True
            return
        status, ctype, body = case
        data = body.encode()
        self.send_response(status, KEY if name == "reason_phrase" else None)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):  # the server's own access log is not under test
        pass


@pytest.fixture
def echo_server():
    _Echo.served = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_an_endpoint_echoing_the_key_in_every_encoding_leaks_no_fragment(echo_server, tmp_path, monkeypatch,
                                                                         capfd, caplog):
    from ray_cluster import runtime
    from storage import datasets
    from tasks.augment.tpt import AugmentParams
    from tasks.ingest.sources import IngestSource
    from tests import stages

    monkeypatch.setenv(KEY_ENV, KEY)
    caplog.set_level(logging.DEBUG)
    n = len(CASES)
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": f"document number {i} about the weather in town {i}."}) + "\n"
                           for i in range(n)))
    root = str(tmp_path / "store")
    prof = runtime.load_profile("serial")
    ing = stages.ingest([IngestSource(path=str(src), domain="web", lang="en")], root=root, dataset="echo",
                        docs_per_shard=n, profile=prof)
    params = AugmentParams(backend="openai", base_url=echo_server, model="smollm2", api_key_env=KEY_ENV,
                           max_new_tokens=8, max_input_tokens=64, concurrency=1, retries=0, backoff_s=0.01)
    ref = stages.run("augment", [ing], params, prof)

    rows = datasets.read_table(ref).to_pylist()
    assert sorted(_Echo.served) == sorted(CASES)  # every hostile form was served once
    assert len(rows) == n  # committed: one row per document, none dropped
    errors = [r["aug_error"] for r in rows if r["aug_error"] is not None]
    assert len(errors) == n - 1, errors  # all but echo_as_text failed, each with a reason kept in the row
    assert any(e.startswith("http 401: xxxx") and "***" in e for e in errors), errors  # the cut body, redacted

    forbidden = _forbidden_fragments()
    found: dict[str, str] = {}

    def search(where: str, text: str) -> None:
        for f in forbidden:
            if f in text:
                found[where] = f
                return

    n_files = n_parquet = 0
    for path in (tmp_path / "store").rglob("*"):
        if not path.is_file():
            continue
        n_files += 1
        search(str(path), path.read_bytes().decode("latin-1"))
        if path.suffix == ".parquet":  # compressed pages: search the decoded values too
            n_parquet += 1
            search(f"{path} (values)", json.dumps(pq.read_table(path).to_pylist(), default=str,
                                                  ensure_ascii=False))
    assert n_files >= 4 and n_parquet >= 2  # ingest's and augment's shards and manifests were searched
    out, err = capfd.readouterr()
    search("stdout/stderr", out + err)
    search("log records", "\n".join(r.getMessage() + str(r.exc_text or "") for r in caplog.records))
    assert not found, f"key fragments found: {found}"


@pytest.mark.parametrize("text", [
    f"Bearer {KEY}"[:300], KEY[:7], KEY[-9:], KEY.upper(), KEY.encode().hex(),
    base64.urlsafe_b64encode(f"Basic {USER}:{KEY}".encode()).decode(), json.dumps({"k": KEY}),
])
def test_the_redactor_masks_fragments_and_encodings_and_keeps_the_rest(text):
    out = Redactor(KEY)(f"before {text} after")
    assert out.startswith("before ") and out.endswith(" after") and "***" in out
    assert not any(f in out for f in _forbidden_fragments())


def test_the_redactor_leaves_text_without_the_key_alone():
    text = "401 Unauthorized: invalid api key (see https://example.org/docs?x=1%2F2) aGVsbG8gd29ybGQ="
    assert Redactor(KEY)(text) == text
    assert Redactor(None)(text) == text and Redactor("")(text) == text
