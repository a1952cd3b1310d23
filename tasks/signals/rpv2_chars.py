"""The RPv2 quality signals' per-code-point character classes, computed with CPython's own predicates (so the numba
kernels match `re`, `regex` and `str` exactly) and kept on disk for fresh workers."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
import unicodedata

import numpy as np
import regex

from tasks.common.tempfiles import cache_root, tmp_path
from tasks.signals import _rpv2_kernels as K


@functools.cache
def char_table() -> np.ndarray:
    """Per-code-point class flags (see `compute_char_table`), kept on disk: computing them takes ~1 s, paid by
    every fresh Ray worker otherwise. The file is keyed by what decides the flags (Python's Unicode database, the
    `regex` module's version, the flag values), so a different interpreter never reads another's table."""
    flags = (K.F_WORD, K.F_SPACE, K.F_TOK_WORD, K.F_TOK_SPACE, K.F_ASCII_ALPHA, K.F_UPPER, K.F_LOWER_OR_TITLE,
             K.F_NUMERIC)
    key = hashlib.sha256(repr((sys.version, unicodedata.unidata_version, regex.__version__, flags,
                               _CHAR_TABLE_FORMAT)).encode()).hexdigest()[:16]
    path = cache_root() / "rpv2" / f"chars-{key}.npy"
    try:
        t = np.load(path, allow_pickle=False)
        if t.shape == (0x110000,) and t.dtype == np.uint8:
            return t
    except (OSError, ValueError):
        pass  # absent or unreadable (a torn file from another era): recompute below
    t = compute_char_table()
    try:  # a temporary name, then an atomic rename: concurrent workers never read half a table
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_path(path)
        with open(tmp, "wb") as f:
            np.save(f, t, allow_pickle=False)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: every process computes the table, as before
    return t


_CHAR_TABLE_FORMAT = 1  # bump when `compute_char_table` changes


def compute_char_table() -> np.ndarray:
    """Per-code-point class flags computed with CPython's own predicates (so they match `re` and `str`)."""
    t = np.zeros(0x110000, np.uint8)
    everything = "".join(map(chr, range(0x110000)))
    t[[ord(c) for c in re.findall(r"\w", everything)]] |= K.F_WORD
    t[[ord(c) for c in re.findall(r"\s", everything)]] |= K.F_SPACE
    nltk_flags = re.UNICODE | re.MULTILINE | re.DOTALL  # nltk RegexpTokenizer defaults, compiled by `regex`
    t[[ord(c) for c in regex.findall(r"\w", everything, nltk_flags)]] |= K.F_TOK_WORD
    t[[ord(c) for c in regex.findall(r"\s", everything, nltk_flags)]] |= K.F_TOK_SPACE
    for i, c in enumerate(everything):
        if i < 0x80 and c.isascii() and c.isalpha():
            t[i] |= K.F_ASCII_ALPHA
        if c.isupper():
            t[i] |= K.F_UPPER
        elif c.islower() or c.istitle():  # single-char istitle() is "Lt or upper"; upper handled above
            t[i] |= K.F_LOWER_OR_TITLE
        if c.isnumeric():
            t[i] |= K.F_NUMERIC
    return t
