"""Decontamination: n-gram overlap between training documents and the evaluation sets the model is scored on.

Brown et al. 2020 (GPT-3, Appendix C) flag a training document that shares a 13-gram with a test item, after
lower-casing and stripping punctuation; datatrove's `NGramsDecontFilter` does the same per document. We normalize
both sides with RPv2's `normalize` (lower, ASCII punctuation dropped, whitespace collapsed, NFD; the one
normalization the dedup stages use too), split on whitespace and hash every word n-gram to 64 bits.

The eval items are read from the same local files the evaluate flow scores (tasks/common/eval_sets SPECS): per item the
question followed by its gold answer (how a leaked item reads in a web page), plus every choice on its own (PIQA's
and HellaSwag's long choices are test text too). An item shorter than n words has no n-gram and cannot be found:
the index stats count them (`too_short`), as GPT-3 reports per task.

The index (sorted unique n-gram hashes, a task bit mask per hash, and (hash, task, item) rows for item-level counts)
is built once per eval-set version: its cache file is keyed by a sha1 over the eval files' bytes, n and this
module's normalization, and `eval_fingerprint` (the same sha1) is part of the params, so new eval files make a new
stage version. Each worker loads it once (lru_cache) and looks documents up with a binary search (a set in the
worker: ~10^6 hashes for all ten tasks).

Per document: `dc_ngrams` (distinct eval n-grams it contains), `dc_tasks` (tasks they come from), `dc_matched` (the
matched hashes: the evaluate flow's `eval_contamination` table counts items from them) and, when `dc_ngrams >=
threshold`, `keep = false`, `drop_reason = decontam_<task>` (the task with most matched n-grams; an earlier rule's
reason wins). threshold 1 = any shared n-gram, as GPT-3 and datatrove.

    idx = eval_index(DecontaminateParams(eval_dir="../shared/data/eval", tasks=("arc_easy",)))
    out = decontaminate(batch, params)
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash

from tasks.common.eval_sets import ALL_TASKS, SPECS
from tasks.common.stage import implements
from tasks.common.tempfiles import cache_root
from tasks.common.textnorm import rpv2_normalize
from tasks.common.verdict import fold_verdict

INDEX_FORMAT = "1"  # bump when the normalization, hashing or item text changes: old cache files are ignored
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier (golden ratio, Knuth): a rolling polynomial hash


@dataclass(frozen=True, kw_only=True, slots=True)
class DecontaminateParams:
    """Decontamination settings. eval_dir and tasks default to the recipe's `evaluate` section (datasets_cfg fills
    them in), so the stage checks exactly what the model will be scored on.

    n: words per n-gram (13: GPT-3, datatrove NGramsDecontFilter).
    threshold: distinct eval n-grams a document may contain before it is dropped (1: any).
    cache_dir: where index files are kept (default $QUARRY_CACHE or ~/.cache/quarry, then decontaminate/).
    eval_fingerprint: set from the eval files' bytes (never by hand): new eval files, new version.
    """

    eval_dir: str | None = None
    tasks: tuple[str, ...] = ALL_TASKS
    n: int = 13
    threshold: int = 1
    cache_dir: str | None = None
    text_column: str = "text"
    eval_fingerprint: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.n <= 64:
            raise ValueError(f"n must be in [1, 64], got {self.n}")
        if self.threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {self.threshold}")
        unknown = [str(t)[:40] for t in self.tasks if t not in SPECS]
        if unknown or not self.tasks:
            raise ValueError(f"tasks: unknown eval tasks {unknown[:5]}; known: {list(SPECS)}")
        if self.eval_dir is not None:  # a missing file: a ValueError, so the recipe loader names the recipe and key
            try:
                object.__setattr__(self, "eval_fingerprint", fingerprint(self.eval_dir, self.tasks))
            except FileNotFoundError as e:
                raise ValueError(f"eval_dir: {e}") from None


def eval_files(eval_dir: str | Path, tasks: tuple[str, ...]) -> dict[str, list[Path]]:
    """task -> the local files the evaluate flow reads for it (a missing one is an error naming it)."""
    root = Path(eval_dir)
    out = {}
    for task in tasks:
        spec = SPECS[task]
        if "dir" in spec:  # MMLU: one CSV per subject
            files = sorted((root / spec["dir"] / "test").glob("*_test.csv"))
            if not files:
                raise FileNotFoundError(f"no MMLU test CSVs under {root / spec['dir'] / 'test'}")
        else:
            files = [root / spec["file"]]
            if not files[0].is_file():
                raise FileNotFoundError(f"eval file for {task!r} missing: {files[0]}")
        out[task] = files
    return out


def fingerprint(eval_dir: str | Path, tasks: tuple[str, ...]) -> str:
    """sha1 over the eval files' names and bytes (a few MB: milliseconds)."""
    h = hashlib.sha1(INDEX_FORMAT.encode())
    for task, files in eval_files(eval_dir, tasks).items():
        h.update(task.encode() + b"\0")
        for f in files:
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def eval_items(eval_dir: str | Path, tasks: tuple[str, ...]) -> list[tuple[str, int, list[str]]]:
    """(task, item index, text segments) per eval item, in file order (the index evaluate's samples use)."""
    out = []
    for task, files in eval_files(eval_dir, tasks).items():
        if task == "mmlu":
            i = 0
            for f in files:
                with open(f, newline="", encoding="utf-8") as fh:
                    for row in csv.DictReader(fh):
                        choices = [row.get(f"choice{k}") or "" for k in range(4)]
                        gold = choices[int(row["answer"])] if str(row.get("answer", "")).isdigit() else ""
                        out.append((task, i, [f"{row['question']} {gold}", *choices]))
                        i += 1
            continue
        for i, doc in enumerate(_jsonl(files[0])):
            out.append((task, i, _segments(task, doc)))
    return out


def _segments(task: str, doc: dict) -> list[str]:
    if task == "hellaswag":
        endings = doc.get("endings") or []
        gold = endings[int(doc["label"])] if str(doc.get("label", "")).isdigit() and endings else ""
        return [f"{doc.get('ctx', '')} {gold}", *endings]
    if task == "lambada":
        return [f"{doc['context']} {doc['continuation']}"]
    if task == "winogrande":
        options = doc.get("context_options") or []
        gold = options[int(doc["gold"])] if options else ""
        return [f"{gold} {doc.get('continuation', '')}", *(f"{o} {doc.get('continuation', '')}" for o in options)]
    choices = [str(c) for c in doc.get("choices") or []]
    gold = choices[int(doc["gold"])] if choices and isinstance(doc.get("gold"), int) else ""
    query = str(doc.get("query", "")).removeprefix("Question:").strip()
    return [f"{query} {gold}", *choices]


def ngram_hashes(text: str | None, n: int) -> np.ndarray:
    """Distinct 64-bit hashes of the word n-grams of the normalized text (empty when shorter than n words)."""
    if not text:
        return np.zeros(0, np.uint64)
    words = rpv2_normalize(text).split()
    if len(words) < n:
        return np.zeros(0, np.uint64)
    h = np.fromiter((xxhash.xxh64_intdigest(w.encode("utf-8", "surrogatepass")) for w in words), np.uint64, len(words))
    m = len(words) - n + 1
    acc = h[:m].copy()
    with np.errstate(over="ignore"):  # wrapping uint64 arithmetic is the hash
        for j in range(1, n):
            acc = acc * _MULT + h[j : j + m]
    return np.unique(acc)


@dataclass(frozen=True)
class EvalIndex:
    hashes: np.ndarray  # sorted unique uint64
    masks: np.ndarray  # uint32 bit per task (bit i = tasks[i]) for each hash
    item_hash: np.ndarray  # (hash, task id, item) rows, one per distinct n-gram of an item
    item_task: np.ndarray
    item_id: np.ndarray
    tasks: tuple[str, ...]
    stats: dict

    def lookup(self, grams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(matched hashes, their task masks) among `grams`."""
        if len(grams) == 0 or len(self.hashes) == 0:
            return np.zeros(0, np.uint64), np.zeros(0, np.uint32)
        pos = np.minimum(np.searchsorted(self.hashes, grams), len(self.hashes) - 1)
        hit = self.hashes[pos] == grams
        return grams[hit], self.masks[pos[hit]]


def build_index(eval_dir: str | Path, tasks: tuple[str, ...], n: int) -> EvalIndex:
    rows_h, rows_t, rows_i = [], [], []
    too_short: dict[str, int] = {}
    items: dict[str, int] = {}
    for task, i, segments in eval_items(eval_dir, tasks):
        grams = np.unique(np.concatenate([ngram_hashes(s, n) for s in segments]))
        t = tasks.index(task)
        items[task] = items.get(task, 0) + 1
        if len(grams) == 0:
            too_short[task] = too_short.get(task, 0) + 1
            continue
        rows_h.append(grams)
        rows_t.append(np.full(len(grams), t, np.uint8))
        rows_i.append(np.full(len(grams), i, np.uint32))
    ih = np.concatenate(rows_h) if rows_h else np.zeros(0, np.uint64)
    it = np.concatenate(rows_t) if rows_t else np.zeros(0, np.uint8)
    ii = np.concatenate(rows_i) if rows_i else np.zeros(0, np.uint32)
    hashes, inv = np.unique(ih, return_inverse=True)
    masks = np.zeros(len(hashes), np.uint32)
    np.bitwise_or.at(masks, inv, (np.uint32(1) << it.astype(np.uint32)))
    stats = {"items": items, "too_short": too_short, "ngrams": int(len(hashes))}
    return EvalIndex(hashes, masks, ih, it, ii, tuple(tasks), stats)


def _cache_dir(params: DecontaminateParams) -> Path:
    return (Path(params.cache_dir) if params.cache_dir else cache_root()) / "decontaminate"


@lru_cache(maxsize=4)
def _cached_index(eval_dir: str, tasks: tuple[str, ...], n: int, fp: str, cache_dir: str) -> EvalIndex:
    path = Path(cache_dir) / f"{fp}-n{n}-{len(tasks)}.npz"
    if path.is_file():
        try:
            z = np.load(path, allow_pickle=False)
            return EvalIndex(z["hashes"], z["masks"], z["item_hash"], z["item_task"], z["item_id"],
                             tuple(str(t) for t in z["tasks"]), json.loads(str(z["stats"])))
        except (OSError, ValueError, KeyError):
            pass  # a torn or foreign file: rebuild and replace it
    idx = build_index(eval_dir, tasks, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, hashes=idx.hashes, masks=idx.masks, item_hash=idx.item_hash, item_task=idx.item_task,
                     item_id=idx.item_id, tasks=np.array(tasks), stats=np.array(json.dumps(idx.stats)))
        os.replace(tmp, path)  # atomic: a concurrent worker reads the old file or the new one, never half
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return idx


def eval_index(params: DecontaminateParams) -> EvalIndex:
    """The eval n-gram index for params (cached on disk per eval-set version, in memory per worker)."""
    if params.eval_dir is None:
        raise ValueError("decontaminate.eval_dir is not set (and the recipe has no evaluate.eval_dir to take)")
    return _cached_index(str(params.eval_dir), tuple(params.tasks), params.n, params.eval_fingerprint,
                         str(_cache_dir(params)))


@implements("decontaminate")
def decontaminate(batch: pa.Table, params: DecontaminateParams) -> pa.Table:
    """The same rows in the same order with dc_ngrams, dc_tasks, dc_matched (and keep/drop_reason/drop_stage)."""
    if params.text_column not in batch.column_names:
        raise ValueError(f"decontaminate needs a {params.text_column!r} column, got {batch.column_names}")
    idx = eval_index(params)
    counts, tasks, matched, reasons = [], [], [], []
    bits = [np.uint32(1 << i) for i in range(len(idx.tasks))]
    for text in batch.column(params.text_column).to_pylist():
        hit, masks = idx.lookup(ngram_hashes(text, params.n))
        per_task = [int(np.count_nonzero(masks & b)) for b in bits]
        counts.append(len(hit))
        tasks.append([t for t, k in zip(idx.tasks, per_task, strict=True) if k])
        matched.append(hit.tolist())
        best = max(range(len(per_task)), key=lambda i: (per_task[i], -i)) if per_task else 0
        reasons.append(f"decontam_{idx.tasks[best]}" if len(hit) >= params.threshold else None)
    out = batch.drop_columns([c for c in ("dc_ngrams", "dc_tasks", "dc_matched") if c in batch.column_names])
    out = out.append_column("dc_ngrams", pa.array(counts, pa.int32()))
    out = out.append_column("dc_tasks", pa.array(tasks, pa.list_(pa.string())))
    out = out.append_column("dc_matched", pa.array(matched, pa.list_(pa.uint64())))
    return fold_verdict(out, reasons, stage="decontaminate")



def contaminated_items(texts: Any, params: DecontaminateParams) -> pa.Table:
    """Per task: eval items, items sharing at least one n-gram with `texts` (GPT-3's "dirty" items), too-short
    items (never findable), and the fraction dirty. `texts`: the training documents' text, an iterable."""
    idx = eval_index(params)
    seen = [idx.lookup(ngram_hashes(t, params.n))[0] for t in texts]
    matched = np.unique(np.concatenate(seen)) if seen else np.zeros(0, np.uint64)
    hit = np.isin(idx.item_hash, matched)
    dirty = {(int(t), int(i)) for t, i in zip(idx.item_task[hit], idx.item_id[hit], strict=True)}
    rows = []
    for t, task in enumerate(idx.tasks):
        n_items = idx.stats["items"].get(task, 0)
        k = sum(1 for tt, _ in dirty if tt == t)
        rows.append({"task": task, "items": n_items, "contaminated": k,
                     "too_short": idx.stats["too_short"].get(task, 0),
                     "fraction": k / n_items if n_items else None, "n": params.n})
    return pa.Table.from_pylist(rows, schema=CONTAMINATION_SCHEMA)


CONTAMINATION_SCHEMA = pa.schema([("task", pa.string()), ("items", pa.int64()), ("contaminated", pa.int64()),
                                  ("too_short", pa.int64()), ("fraction", pa.float64()), ("n", pa.int64())])


@implements("eval_contamination")
def eval_contamination_stage(tables: dict, params: DecontaminateParams, ctx) -> tuple[pa.Table, dict]:
    """The ``eval_contamination`` stage (kind ``global``): per task, how many of its items overlap the documents the
    ``train`` input's model was trained on (the ``docs`` input: the curated version its tokenize step read)."""
    table = contaminated_items(tables["docs"].column(params.text_column).to_pylist(), params)
    n = table.num_rows
    table = table.append_column("model_version", pa.array([ctx.input_ref("train")] * n, pa.string()))
    table = table.append_column("data_version", pa.array([ctx.input_ref("docs")] * n, pa.string()))
    return table, {"contamination": table.select(["task", "items", "contaminated", "fraction"]).to_pylist()}


def contamination_artifact(manifest: dict) -> list[tuple[str, list[dict], str]]:
    rows = (manifest.get("stats") or {}).get("contamination") or []
    return [("eval-contamination", rows, f"eval items found in the training data, "
             f"{manifest['dataset']}/{manifest['stage']}/{manifest['version']}")] if rows else []
