"""Text normalization shared by dedup and decontamination.

RPv2's ``normalize`` (app/src/utilities/text/normalization.py, commit 6d2cee9): the form exact dedup hashes, MinHash
shingles and decontamination's n-grams are computed on.
"""

from __future__ import annotations

import string
import unicodedata

_ASCII_PUNCT = string.punctuation.encode("ascii")  # RPv2 removes ASCII punctuation only


def rpv2_normalize(text: str) -> str:
    """RPv2 `normalize`: drop ASCII punctuation, lower, strip, collapse whitespace, NFD (accents kept, decomposed).

    Same result as RPv2's `str.translate` + `re.sub(r"\\s+", " ")`, faster: ASCII bytes never occur inside a UTF-8
    multi-byte sequence, so deleting them from the bytes is exact, and `str.split()` uses the same Unicode
    whitespace class as `re`'s `\\s`.
    """
    text = text.encode("utf-8", "surrogatepass").translate(None, _ASCII_PUNCT).decode("utf-8", "surrogatepass")
    return unicodedata.normalize("NFD", " ".join(text.lower().split()))
