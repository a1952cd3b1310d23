"""Streaming writers, one per format: each takes documents one at a time and holds at most one output shard (MDS)
or a few bytes per document (the index arrays), never the corpus.

* Megatron ``.bin``/``.idx``: the ``MMIDIDX`` index of megatron-core's IndexedDataset (version 1, dtype code,
  sequence lengths int32, byte pointers int64, document indices int64), tokens in the smallest dtype that holds the
  vocabulary (uint16 up to 65,536 ids, else int32: the dtypes Megatron's DType enum has).
* nanotron / datatrove: ``.ds`` tokens (uint16 or uint32, datatrove's token_size 2/4), ``.ds.index`` uint64
  document ends, ``.ds.metadata`` (tokenizer|token_size, token count), as datatrove's TokenizedFile writes them.
* MDS: mosaicml-streaming's joint shards (uint32 sample count, uint32 offsets, the JSON config, samples whose
  variable-size columns are prefixed by their uint32 sizes) and its ``index.json`` (version 2).
* Hugging Face: Parquet shards of ``rows_per_file`` rows.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def token_dtype(vocab_size: int, *, signed_wide: bool) -> np.dtype:
    """uint16 when every id fits, else int32 (Megatron has no uint32) or uint32 (datatrove, MDS)."""
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32 if signed_wide else np.uint32)


class MegatronWriter:
    _CODES = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4}

    def __init__(self, prefix: Path, dtype: np.dtype):
        self.prefix, self.dtype = prefix, dtype
        prefix.parent.mkdir(parents=True, exist_ok=True)
        self.bin = open(f"{prefix}.bin.tmp", "wb")
        self.lengths: list[int] = []  # 12 bytes a document (Megatron's own builder keeps the same lists)

    def add(self, tokens: np.ndarray) -> None:
        self.bin.write(tokens.astype(self.dtype, copy=False).tobytes())
        self.lengths.append(len(tokens))

    def close(self) -> dict:
        self.bin.close()
        lengths = np.asarray(self.lengths, np.int32)
        pointers = np.zeros(len(lengths), np.int64)
        np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        with open(f"{self.prefix}.idx.tmp", "wb") as f:
            f.write(b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", self._CODES[self.dtype]))
            f.write(struct.pack("<Q", len(lengths)) + struct.pack("<Q", len(lengths) + 1))
            f.write(lengths.tobytes() + pointers.tobytes() + np.arange(len(lengths) + 1, dtype=np.int64).tobytes())
        for ext in ("bin", "idx"):
            os.replace(f"{self.prefix}.{ext}.tmp", f"{self.prefix}.{ext}")
        return {"files": [f"{self.prefix.name}.bin", f"{self.prefix.name}.idx"], "docs": len(lengths),
                "tokens": int(lengths.sum())}


class NanotronWriter:
    def __init__(self, path: Path, dtype: np.dtype, tokenizer_name: str):
        self.path, self.dtype, self.name = path, dtype, tokenizer_name
        path.parent.mkdir(parents=True, exist_ok=True)
        self.ds = open(f"{path}.tmp", "wb")
        self.index = open(f"{path}.index.tmp", "wb")
        self.end = self.docs = 0

    def add(self, tokens: np.ndarray) -> None:
        self.ds.write(tokens.astype(self.dtype, copy=False).tobytes())
        self.end += len(tokens)
        self.docs += 1
        self.index.write(struct.pack("<Q", self.end))

    def close(self) -> dict:
        self.ds.close()
        self.index.close()
        with open(f"{self.path}.metadata.tmp", "w") as f:
            f.write(f"{self.name}|{self.dtype.itemsize}\n{self.end}\n{self.end} tokens")
        for ext in ("", ".index", ".metadata"):
            os.replace(f"{self.path}{ext}.tmp", f"{self.path}{ext}")
        n = self.path.name
        return {"files": [n, f"{n}.index", f"{n}.metadata"], "docs": self.docs, "tokens": self.end}


class MdsWriter:
    """Columns (sorted by name, as MDSWriter orders them): doc_id str, domain str, tokens ndarray:<dtype>."""

    COLUMNS = {"doc_id": "str", "domain": "str", "tokens": None}

    def __init__(self, folder: Path, dtype: np.dtype, size_limit: int):
        self.folder, self.dtype, self.limit = folder, dtype, size_limit
        folder.mkdir(parents=True, exist_ok=True)
        self.encodings = [e or f"ndarray:{dtype.name}" for e in self.COLUMNS.values()]
        self.config = {"column_encodings": self.encodings, "column_names": list(self.COLUMNS),
                       "column_sizes": [None] * len(self.COLUMNS), "compression": None, "format": "mds",
                       "hashes": [], "size_limit": size_limit, "version": 2}
        self.config_data = json.dumps(self.config, sort_keys=True).encode()
        self.samples: list[bytes] = []
        self.bytes = 0
        self.shards: list[dict] = []
        self.docs = self.tokens = 0

    def add(self, tokens: np.ndarray, doc_id: str, domain: str) -> None:
        arr = tokens.astype(self.dtype, copy=False)
        ndim_shape = bytes([(1 << 2) | (0 if len(arr) < 1 << 8 else 1 if len(arr) < 1 << 16 else 2)])
        shape = np.array([len(arr)], {0: np.uint8, 1: np.uint16, 2: np.uint32}[ndim_shape[0] & 3]).tobytes()
        parts = [doc_id.encode(), domain.encode(), ndim_shape + shape + arr.tobytes()]
        sample = np.array([len(p) for p in parts], np.uint32).tobytes() + b"".join(parts)
        if self.samples and self.bytes + len(sample) + 4 > self.limit:
            self._flush()
        self.samples.append(sample)
        self.bytes += len(sample) + 4
        self.docs += 1
        self.tokens += len(arr)

    def _flush(self) -> None:
        name = f"shard.{len(self.shards):05d}.mds"
        n = len(self.samples)
        offsets = np.cumsum([0] + [len(s) for s in self.samples]).astype(np.uint32)
        offsets += 4 + 4 * (n + 1) + len(self.config_data)
        data = np.uint32(n).tobytes() + offsets.tobytes() + self.config_data + b"".join(self.samples)
        with open(self.folder / f"{name}.tmp", "wb") as f:
            f.write(data)
        os.replace(self.folder / f"{name}.tmp", self.folder / name)
        self.shards.append({**self.config, "samples": n, "zip_data": None,
                            "raw_data": {"basename": name, "bytes": len(data), "hashes": {}}})
        self.samples, self.bytes = [], 0

    def close(self) -> dict:
        if self.samples:
            self._flush()
        (self.folder / "index.json").write_text(json.dumps({"shards": self.shards, "version": 2}, sort_keys=True))
        return {"files": [s["raw_data"]["basename"] for s in self.shards] + ["index.json"], "docs": self.docs,
                "tokens": self.tokens}


class HfWriter:
    SCHEMA = pa.schema([("doc_id", pa.string()), ("domain", pa.string()), ("source", pa.string()),
                        ("text", pa.string()), ("input_ids", pa.list_(pa.uint32()))])

    def __init__(self, folder: Path, split: str, rows_per_file: int):
        self.folder, self.split, self.per = folder, split, rows_per_file
        folder.mkdir(parents=True, exist_ok=True)
        self.rows: list[tuple] = []
        self.files: list[str] = []
        self.docs = self.tokens = 0

    def add(self, tokens: np.ndarray, doc_id: str, domain: str, source: str | None, text: str) -> None:
        self.rows.append((doc_id, domain, source, text, tokens))
        self.docs += 1
        self.tokens += len(tokens)
        if len(self.rows) >= min(self.per, 2048):
            self._write(final=False)

    def _write(self, final: bool) -> None:
        if self.rows:
            cols = list(zip(*self.rows, strict=True))
            table = pa.table([pa.array(c, f.type) if f.name != "input_ids" else
                              pa.array([np.asarray(t, np.uint32) for t in c], f.type)
                              for c, f in zip(cols, self.SCHEMA, strict=True)], schema=self.SCHEMA)
            if getattr(self, "_pq", None) is None:
                name = f"{self.split}-{len(self.files):05d}.parquet"
                self._pq, self._rows_in_file = pq.ParquetWriter(self.folder / f"{name}.tmp", self.SCHEMA), 0
                self.files.append(name)
            self._pq.write_table(table)
            self._rows_in_file += table.num_rows
            self.rows = []
        if getattr(self, "_pq", None) is not None and (final or self._rows_in_file >= self.per):
            self._pq.close()
            self._pq = None
            os.replace(self.folder / f"{self.files[-1]}.tmp", self.folder / self.files[-1])

    def close(self) -> dict:
        self._write(final=True)
        return {"files": list(self.files), "docs": self.docs, "tokens": self.tokens}
