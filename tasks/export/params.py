"""The ``export`` recipe section: which formats, which tokenizer, shuffle, split and mixture."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tasks.common.assets import SMOLLM2

FORMATS = ("megatron", "nanotron", "mds", "hf")


@dataclass(frozen=True, kw_only=True, slots=True)
class ExportParams:
    """Tokenized export of a selection (the ``export`` section: steps ``export_tokens`` -> ``export_files``)."""

    formats: tuple[str, ...] = FORMATS
    # "smollm2" (the bundled tokenizer), a tokenizer.json file, or a local model folder holding one
    tokenizer: str = SMOLLM2
    # appended to every document in the token formats: Megatron's preprocess_data --append-eod and datatrove's
    # DocumentTokenizer(eos_token=...) both end each document with it
    eos_token: str = "<|endoftext|>"
    bos_token: str | None = None  # prepended when set (Llama-style tokenizers); SmolLM2 uses none
    text_column: str = "text"
    shuffle: bool = False  # a seeded document shuffle (a hash of seed and doc_id orders the documents)
    seed: int = 0
    # share of documents held out as the validation split, chosen by a hash of doc_id alone (the split does not
    # move when the seed or the shuffle changes)
    validation_fraction: float = 0.0
    # target token share per domain (normalized, as pack's mixture_weights); None: the natural mixture, with
    # balance's bal_copies counted (each copy is a sample draw, written once and weighted in the blend)
    domain_weights: Mapping[str, float] | None = None
    # source name -> declared license (SPDX id), shown in the dataset card
    licenses: Mapping[str, str] = field(default_factory=dict)
    rows_per_file: int = 100_000  # Hugging Face Parquet shard size
    mds_shard_bytes: int = 1 << 26  # MDS shard size limit (mosaicml-streaming's default, 64 MiB)

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ValueError(f"formats must be some of {list(FORMATS)}, got {list(self.formats)}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.domain_weights is not None and (any(v < 0 for v in self.domain_weights.values())
                                                or sum(self.domain_weights.values()) <= 0):
            raise ValueError(f"domain_weights must be non-negative with a positive sum, got {dict(self.domain_weights)}")
        if self.rows_per_file < 1 or self.mds_shard_bytes < 1024:
            raise ValueError("rows_per_file must be >= 1 and mds_shard_bytes >= 1024")


def tokenizer_file(name: str) -> Path:
    """The tokenizer.json behind ``name``: the bundled SmolLM2 one, a file, or a model folder's."""
    if name == SMOLLM2:
        from tasks.common.assets import tokenizer_dir

        return tokenizer_dir(SMOLLM2) / "tokenizer.json"
    path = Path(name)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer {name!r}: no tokenizer.json there (give 'smollm2', a file or a model folder)")
    return path


def split_of(doc_id: str, validation_fraction: float) -> str:
    """train / validation by a hash of doc_id (stable across seeds, shuffles and shardings)."""
    if validation_fraction <= 0:
        return "train"
    h = int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little")
    return "validation" if h / 2**64 < validation_fraction else "train"


def shuffle_key(doc_id: str, seed: int) -> int:
    """A document's place in the seeded shuffle (63 bits: it sorts as an Arrow int64)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{doc_id}".encode(), digest_size=8).digest(), "little") >> 1
