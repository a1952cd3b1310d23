"""Numba kernel behind `tasks.dedup.minhash.minhash_signatures`: RPv2 MinHash values for a whole batch at once.

Per document (RPv2 `dedupe/minhash.py` at 6d2cee9, restated in ../shared/specs/rpv2_signals.md): the space-joined
word 13-grams of the normalized text, each hashed with `sha1_hash32` (the first 4 bytes of the SHA-1 digest read
little-endian), permuted as `((a * h + b) mod (2**61 - 1)) & 0xFFFFFFFF` with uint64 wrap-around in `a * h + b`
(datasketch's formula, which RPv2 uses), min over the shingles per permutation.

SHA-1 is computed here (FIPS 180-4) instead of by `hashlib` because a shingle is ~70 bytes: the per-call cost of
`hashlib.sha1(...).digest()` from Python is several times the hashing itself. `test_minhash_dedup` checks the
kernel's digests against hashlib and every value against the RPv2 gold signatures.
"""

from __future__ import annotations

import numpy as np

from tasks.common import numba_cache as _numba_cache

_numba_cache.ensure()  # a writable kernel cache before numba decorates anything (see that module)

from numba import njit  # noqa: E402

_M32 = np.uint64(0xFFFFFFFF)
_M61 = np.uint64((1 << 61) - 1)


@njit(cache=True, inline="always")
def _rotl(x, n):
    return ((x << np.uint64(n)) | (x >> np.uint64(32 - n))) & np.uint64(0xFFFFFFFF)


@njit(cache=True)
def sha1_h0(buf, start, end, w):
    """The first 32-bit word (h0) of SHA-1(buf[start:end]); `w` is an 80-word uint64 scratch array."""
    mask = np.uint64(0xFFFFFFFF)
    h0 = np.uint64(0x67452301)
    h1 = np.uint64(0xEFCDAB89)
    h2 = np.uint64(0x98BADCFE)
    h3 = np.uint64(0x10325476)
    h4 = np.uint64(0xC3D2E1F0)
    length = end - start
    bitlen = np.uint64(length) * np.uint64(8)
    padded = ((length + 8) // 64 + 1) * 64  # message + 0x80 + zeros + 64-bit length, in 64-byte blocks
    for block in range(0, padded, 64):
        for i in range(16):
            word = np.uint64(0)
            for j in range(4):
                pos = block + 4 * i + j
                if pos < length:
                    byte = np.uint64(buf[start + pos])
                elif pos == length:
                    byte = np.uint64(0x80)
                elif pos >= padded - 8:
                    byte = (bitlen >> np.uint64(8 * (padded - 1 - pos))) & np.uint64(0xFF)
                else:
                    byte = np.uint64(0)
                word = (word << np.uint64(8)) | byte
            w[i] = word
        for i in range(16, 80):
            w[i] = _rotl(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1)
        a, b, c, d, e = h0, h1, h2, h3, h4
        for i in range(80):
            if i < 20:
                f = (b & c) | ((~b & mask) & d)
                k = np.uint64(0x5A827999)
            elif i < 40:
                f = b ^ c ^ d
                k = np.uint64(0x6ED9EBA1)
            elif i < 60:
                f = (b & c) | (b & d) | (c & d)
                k = np.uint64(0x8F1BBCDC)
            else:
                f = b ^ c ^ d
                k = np.uint64(0xCA62C1D6)
            t = (_rotl(a, 5) + f + e + k + w[i]) & mask
            e = d
            d = c
            c = _rotl(b, 30)
            b = a
            a = t
        h0 = (h0 + a) & mask
        h1 = (h1 + b) & mask
        h2 = (h2 + c) & mask
        h3 = (h3 + d) & mask
        h4 = (h4 + e) & mask
    return h0


@njit(cache=True, inline="always")
def _bswap32(x):
    return (
        ((x & np.uint64(0xFF)) << np.uint64(24))
        | ((x & np.uint64(0xFF00)) << np.uint64(8))
        | ((x >> np.uint64(8)) & np.uint64(0xFF00))
        | ((x >> np.uint64(24)) & np.uint64(0xFF))
    )


@njit(cache=True)
def sha1_hash32(buf, start, end):
    """RPv2 `sha1_hash32`: struct.unpack('<I', sha1(bytes).digest()[:4])."""
    w = np.empty(80, dtype=np.uint64)
    return _bswap32(sha1_h0(buf, start, end, w))


@njit(cache=True)
def batch_minhash(buf, offsets, n, a, b):
    """MinHash values of every document in `buf` (normalized UTF-8 texts concatenated; doc i is
    buf[offsets[i]:offsets[i+1]], words separated by single spaces). Returns (values uint32[docs, perms], ok bool[docs]);
    ok is False for a document with fewer than `n` words (RPv2 gives None)."""
    ndocs = len(offsets) - 1
    nperm = len(a)
    out = np.zeros((ndocs, nperm), dtype=np.uint32)
    ok = np.zeros(ndocs, dtype=np.bool_)
    w = np.empty(80, dtype=np.uint64)
    mins = np.empty(nperm, dtype=np.uint64)
    starts = np.empty(0, dtype=np.int64)
    ends = np.empty(0, dtype=np.int64)
    for d in range(ndocs):
        lo, hi = offsets[d], offsets[d + 1]
        if hi <= lo:
            continue
        nwords = 1
        for p in range(lo, hi):
            if buf[p] == 32:
                nwords += 1
        if nwords < n:
            continue
        if len(starts) < nwords:
            starts = np.empty(nwords * 2, dtype=np.int64)
            ends = np.empty(nwords * 2, dtype=np.int64)
        k = 0
        starts[0] = lo
        for p in range(lo, hi):
            if buf[p] == 32:
                ends[k] = p
                k += 1
                starts[k] = p + 1
        ends[k] = hi
        for j in range(nperm):
            mins[j] = _M32 + np.uint64(1)  # above any masked value
        for s in range(nwords - n + 1):
            h = _bswap32(sha1_h0(buf, starts[s], ends[s + n - 1], w))
            for j in range(nperm):
                v = ((a[j] * h + b[j]) % _M61) & _M32
                if v < mins[j]:
                    mins[j] = v
        for j in range(nperm):
            out[d, j] = np.uint32(mins[j])
        ok[d] = True
    return out, ok
