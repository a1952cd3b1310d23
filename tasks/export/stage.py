"""The ``export_files`` step: the tokenized shards -> every requested format, one file set per (split, domain), in
one document order (the shards concatenated, or merged by the seeded shuffle key: memory flat in the corpus size),
with each format's blend of the domains, token counts per domain and source, and the dataset card.

Its output table is the document order: (split, domain, position, doc_id, copies, tokens, offset) traces token
``offset + i`` of the (split, domain) file of any token format back to its document."""

from __future__ import annotations

import hashlib
import heapq
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.common.stage import implements
from tasks.export import card, writers
from tasks.export.params import ExportParams, tokenizer_file
from tasks.export.tokens import load

_COLUMNS = ["doc_id", "exp_copy", "domain", "source", "text", "exp_split", "exp_key", "exp_ids", "exp_n"]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


def _rows(path: Path, shard: int) -> Iterator[tuple]:
    """(key, shard, doc_id, copy, domain, source, text, split, ids, n) per row, one record batch in memory."""
    for b in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=_COLUMNS):
        ids = b.column("exp_ids")
        values, offs = ids.values.to_numpy(zero_copy_only=False), ids.offsets.to_numpy()
        valid = ids.is_valid().to_numpy(zero_copy_only=False)
        cols = [b.column(c).to_pylist() for c in ("exp_key", "doc_id", "exp_copy", "domain", "source", "text",
                                                   "exp_split", "exp_n")]
        for i, (key, doc, copy, dom, src, text, split, n) in enumerate(zip(*cols, strict=True)):
            yield (key, shard, doc, copy, dom or "unknown", src, text, split,
                   values[offs[i]:offs[i + 1]] if valid[i] else None, n)


def ordered_rows(paths: list[Path], shuffle: bool) -> Iterator[tuple]:
    gens = [_rows(p, i) for i, p in enumerate(paths)]
    if not shuffle:
        for g in gens:
            yield from g
    else:  # every shard is sorted by key (export_tokens): a k-way merge gives the global seeded order
        yield from heapq.merge(*gens, key=lambda r: (r[0], r[1]))


def blend(tokens: dict[str, int], weights: dict[str, float] | None) -> dict[str, float]:
    """Domain -> share of the samples a trainer draws: the given weights (normalized), else the token counts with
    balance's copies counted (the natural, balanced mixture)."""
    if weights is not None:
        missing = [d for d, w in weights.items() if w > 0 and not tokens.get(d)]
        if missing:
            raise ValueError(f"export.domain_weights names domains with no tokens in this split: {missing}")
        raw = {d: float(weights.get(d, 0.0)) for d in tokens}
    else:
        raw = {d: float(t) for d, t in tokens.items()}
    total = sum(raw.values())
    return {d: round(w / total, 12) for d, w in sorted(raw.items()) if w > 0} if total else {}


@implements("export_files")
def export_files(tables: dict, params: ExportParams, ctx) -> tuple[pa.Table, dict]:
    src = ctx.input_manifest("tokens")
    in_dir, out = ctx.input_dir("tokens"), ctx.local_dir
    paths = [in_dir / f["name"] for f in src.get("files", [])]
    tok_path = tokenizer_file(params.tokenizer)
    tok = load(params.tokenizer)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    eos = tok.token_to_id(params.eos_token)
    if eos is None:
        raise ValueError(f"export.eos_token {params.eos_token!r} is not in the tokenizer {tok_path}")
    bos = tok.token_to_id(params.bos_token) if params.bos_token else None
    if params.bos_token and bos is None:
        raise ValueError(f"export.bos_token {params.bos_token!r} is not in the tokenizer {tok_path}")
    head = np.array([] if bos is None else [bos], np.uint32)
    tail = np.array([eos], np.uint32)
    fmts = set(params.formats)
    open_w: dict[tuple, object] = {}

    def writer(fmt: str, split: str, domain: str):
        key = (fmt, split, domain if fmt != "hf" else "")
        if key not in open_w:
            d = _safe(domain)
            if fmt == "megatron":
                open_w[key] = writers.MegatronWriter(out / "megatron" / split / d, writers.token_dtype(vocab, signed_wide=True))
            elif fmt == "nanotron":
                open_w[key] = writers.NanotronWriter(out / "nanotron" / split / d / "00000.ds",
                                                     writers.token_dtype(vocab, signed_wide=False), str(tok_path))
            elif fmt == "mds":
                open_w[key] = writers.MdsWriter(out / "mds" / split / d, writers.token_dtype(vocab, signed_wide=False),
                                                params.mds_shard_bytes)
            else:
                open_w[key] = writers.HfWriter(out / "hf" / "data", split, params.rows_per_file)
        return open_w[key]

    order: dict[str, list] = {c: [] for c in ("split", "domain", "position", "doc_id", "copies", "tokens", "offset")}
    where: dict[tuple, int] = {}  # (split, domain, doc_id) -> its row in `order` (copies counted there)
    pos: Counter = Counter()
    offset: Counter = Counter()
    sampled: dict[str, Counter] = defaultdict(Counter)  # split -> domain -> tokens drawn (copies counted)
    by_source: Counter = Counter()
    by_domain: Counter = Counter()
    null_text = 0
    for _key, _shard, doc, copy, dom, source, text, split, ids, n in ordered_rows(paths, params.shuffle):
        if n == 0 and ids is None and copy == 0 and text is None:
            null_text += 1  # no text: no tokens (counted, never written)
            continue
        size = len(head) + n + 1
        sampled[split][dom] += size
        if copy:
            if (split, dom, doc) in where:
                order["copies"][where[(split, dom, doc)]] += 1
            continue
        toks = np.concatenate([head, ids, tail]) if len(ids) or len(head) else tail
        for fmt in fmts:
            w = writer(fmt, split, dom)
            if fmt in ("megatron", "nanotron"):
                w.add(toks)
            elif fmt == "mds":
                w.add(toks, doc, dom)
            else:
                w.add(toks, doc, dom, source, text)
        where[(split, dom, doc)] = len(order["doc_id"])
        for c, v in zip(order, (split, dom, pos[(split, dom)], doc, 1, size, offset[(split, dom)]), strict=True):
            order[c].append(v)
        pos[(split, dom)] += 1
        offset[(split, dom)] += size
        by_source[source or "unknown"] += size
        by_domain[dom] += size
    files = {"/".join(k): w.close() for k, w in sorted(open_w.items())}
    blends = {s: blend(dict(t), dict(params.domain_weights) if params.domain_weights else None)
              for s, t in sorted(sampled.items())}
    mixtures = _write_mixtures(out, fmts, blends)
    stats = {
        "tokenizer": {"path": str(tok_path), "sha256": hashlib.sha256(tok_path.read_bytes()).hexdigest(),
                      "vocab_size": vocab, "eos_id": eos, "bos_id": bos},
        "formats": sorted(fmts), "files": files, "docs": len(order["doc_id"]), "docs_null_text": null_text,
        "tokens": int(sum(by_domain.values())), "tokens_by_domain": dict(sorted(by_domain.items())),
        "tokens_by_source": dict(sorted(by_source.items())),
        "tokens_sampled_by_split_domain": {s: dict(sorted(t.items())) for s, t in sorted(sampled.items())},
        "blend": blends, **mixtures,
    }
    table = pa.table({"split": pa.array(order["split"], pa.string()), "domain": pa.array(order["domain"], pa.string()),
                      "position": pa.array(order["position"], pa.int64()),
                      "doc_id": pa.array(order["doc_id"], pa.string()), "copies": pa.array(order["copies"], pa.int32()),
                      "tokens": pa.array(order["tokens"], pa.int64()), "offset": pa.array(order["offset"], pa.int64())})
    text = card.render(card.gather(ctx, params, stats))
    (out / "README.md").write_text(text)
    if "hf" in fmts:
        (out / "hf" / "README.md").write_text(card.render(card.gather(ctx, params, stats), hf_splits=sorted(sampled)))
    return table, stats


def _write_mixtures(out: Path, fmts: set[str], blends: dict[str, dict[str, float]]) -> dict:
    """Each format's own blending: Megatron's --data-path string, nanotron's dataset_folder/weights, MDS Streams."""
    res: dict = {}
    for split, shares in blends.items():
        if "megatron" in fmts:
            line = " ".join(f"{w} {out / 'megatron' / split / _safe(d)}" for d, w in shares.items())
            (out / "megatron" / f"data_path_{split}.txt").write_text(line + "\n")
            res.setdefault("megatron_data_path", {})[split] = line
        if "nanotron" in fmts:
            spec = {"dataset_folder": [str(out / "nanotron" / split / _safe(d)) for d in shares],
                    "dataset_weights": list(shares.values())}
            (out / "nanotron" / f"datasets_{split}.json").write_text(json.dumps(spec, indent=1))
            res.setdefault("nanotron_datasets", {})[split] = spec
        if "mds" in fmts:
            streams = [{"local": str(out / "mds" / split / _safe(d)), "proportion": w} for d, w in shares.items()]
            (out / "mds" / f"streams_{split}.json").write_text(json.dumps(streams, indent=1))
            res.setdefault("mds_streams", {})[split] = streams
    return res
