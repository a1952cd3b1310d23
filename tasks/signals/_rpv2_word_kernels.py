"""Numba kernels of the word-level RedPajama-V2 signals, over the normalized words `_rpv2_kernels.norm_pass` found:
RPS_Doc_Unique_Words / Word_Entropy, RPS_Doc_Frac_Chars_Top_{2,3,4}gram, RPS_Doc_Frac_Chars_Dupe_{5..10}Grams and
RPS_Doc_LDNOOBW_Words (togethercomputer/RedPajama-Data app/src, commit 6d2cee9; ../shared/specs/rpv2_signals.md).
"""

from __future__ import annotations

import numpy as np

from tasks.common import numba_cache as _numba_cache

_numba_cache.ensure()  # a writable kernel cache before numba decorates anything (see that module)

from numba import njit  # noqa: E402

from tasks.signals._rpv2_kernels import fnv, same_span  # noqa: E402

_MIX = 0x7F4A7C159E3779B1  # odd multiplier that fits int64 (Fibonacci-style hashing of n-gram keys)


@njit(cache=True)
def lookup_words(cps, off, norm, slots, first_start, first_len):
    """Batch word id of each string `cps[off[i]:off[i+1]]`, or -1 if no document of the batch contains it."""
    n = off.shape[0] - 1
    out = np.full(n, -1, np.int64)
    mask = np.uint64(slots.shape[0] - 1)
    for i in range(n):
        s, e = off[i], off[i + 1]
        if e == s:
            continue
        p = fnv(cps, s, e, 0) & mask
        while True:
            j = slots[p]
            if j == -1:
                break
            if same_span(norm, first_start[j], first_len[j], cps, s, e - s):
                out[i] = j
                break
            p = (p + np.uint64(1)) & mask
    return out


@njit(cache=True)
def word_pass(word_id, word_len, word_off, n_distinct, doc_lang, bad1, multi_first, multi_off, multi_tok, multi_lang):
    """Per-doc statistics over normalized words: unique fraction, entropy, RPS_Doc_Frac_Chars_Top_{2,3,4}gram,
    RPS_Doc_Frac_Chars_Dupe_{5..10}Grams and RPS_Doc_LDNOOBW_Words.

    N-grams get exact per-doc ids by interning (id of the (n-1)-gram at i, word id at i+n-1) pairs, so no hash
    collision can merge two different n-grams. LDNOOBW: `bad1[lang, word]` flags 1-word entries; multi-word entries
    (token id lists in `multi_tok[multi_off[e]:multi_off[e+1]]`) are tried at positions whose word id starts one
    (`multi_first[word]` is the first entry index + 1 in a list sorted by first token, 0 if none)."""
    n_docs = word_off.shape[0] - 1
    n_unique = np.zeros(n_docs, np.int64)
    entropy = np.zeros(n_docs, np.float64)
    total_chars = np.zeros(n_docs, np.int64)
    top = np.zeros((n_docs, 3), np.float64)
    dupe = np.zeros((n_docs, 6), np.float64)
    ldnoobw = np.zeros(n_docs, np.int64)
    counts = np.zeros(n_distinct, np.int64)
    max_n = 0
    for d in range(n_docs):
        max_n = max(max_n, word_off[d + 1] - word_off[d])
    cap = 16
    while cap < 2 * max_n + 2:
        cap *= 2
    slot_key = np.empty(cap, np.int64)
    slot_val = np.empty(cap, np.int64)
    slot_used = np.zeros(cap, np.bool_)
    touched = np.empty(max_n, np.int64)
    cur = np.empty(max_n, np.int64)
    nxt = np.empty(max_n, np.int64)
    gcount = np.empty(max_n, np.int64)
    pcount = np.empty(max_n, np.int64)
    mark = np.empty(max_n, np.bool_)
    n_multi = multi_off.shape[0] - 1
    for d in range(n_docs):
        w0 = word_off[d]
        n = word_off[d + 1] - w0
        if n == 0:
            continue
        lang = doc_lang[d]
        tc = 0
        for i in range(n):
            counts[word_id[w0 + i]] += 1
            tc += word_len[w0 + i]
        total_chars[d] = tc
        # entropy in first-occurrence order (Counter insertion order), as RPS_Doc_Unigram_Entropy sums it
        ent = 0.0
        uq = 0
        for i in range(n):
            c = counts[word_id[w0 + i]]
            if c > 0:
                ent += -c / n * np.log(c / n)
                uq += 1
                counts[word_id[w0 + i]] = -c  # seen
        for i in range(n):
            counts[word_id[w0 + i]] = 0
        n_unique[d] = uq
        entropy[d] = ent
        # LDNOOBW
        bad = 0
        for i in range(n):
            wid = word_id[w0 + i]
            if bad1.shape[1] > 0 and bad1[lang, wid]:
                bad += 1
            if multi_first.shape[0] > 0:
                e = multi_first[wid] - 1
                while e >= 0 and e < n_multi and multi_tok[multi_off[e]] == wid:
                    if multi_lang[e] == lang:
                        m = multi_off[e + 1] - multi_off[e]
                        if i + m <= n:
                            ok = True
                            for t in range(1, m):
                                if word_id[w0 + i + t] != multi_tok[multi_off[e] + t]:
                                    ok = False
                                    break
                            if ok:
                                bad += 1
                    e += 1
        ldnoobw[d] = bad
        # n-grams of size 2..10
        for i in range(n):
            cur[i] = word_id[w0 + i]
            counts[cur[i]] += 1
        for i in range(n):
            pcount[i] = counts[cur[i]]  # occurrences in this doc of the (n-1)-gram starting at i
        for i in range(n):
            counts[cur[i]] = 0
        for ng in range(2, 11):
            m = n - ng + 1  # number of n-grams
            if m <= 0:
                break
            # intern (cur[i], word[i+ng-1]) -> dense id in first-occurrence order
            used = 0
            n_touched = 0
            for i in range(m):
                if pcount[i] == 1:
                    # the (n-1)-gram at i occurs once, so the n-gram at i does too: a fresh id, no hashing
                    gcount[used] = 1
                    nxt[i] = used
                    used += 1
                    continue
                key = cur[i] * (n_distinct + 1) + word_id[w0 + i + ng - 1]
                p = (key * _MIX) & (cap - 1)
                while True:
                    if not slot_used[p]:
                        slot_used[p] = True
                        touched[n_touched] = p
                        n_touched += 1
                        slot_key[p] = key
                        slot_val[p] = used
                        gcount[used] = 0
                        nxt[i] = used
                        used += 1
                        break
                    if slot_key[p] == key:
                        nxt[i] = slot_val[p]
                        break
                    p = (p + 1) & (cap - 1)
                gcount[nxt[i]] += 1
            for g in range(n_touched):  # clear only the slots we touched
                slot_used[touched[g]] = False
            for i in range(m):
                cur[i] = nxt[i]
                pcount[i] = gcount[nxt[i]]
            if ng <= 4:
                best = -1
                best_c = 1
                for g in range(used):  # dense ids are in first-occurrence order: strict > keeps the first max
                    if gcount[g] > best_c:
                        best_c = gcount[g]
                        best = g
                if best >= 0:
                    # characters of the top n-gram: find its first occurrence
                    i0 = 0
                    while cur[i0] != best:
                        i0 += 1
                    gl = 0
                    for t in range(ng):
                        gl += word_len[w0 + i0 + t]
                    top[d, ng - 2] = gl * best_c / tc
            if ng >= 5:
                for i in range(n):
                    mark[i] = False
                for i in range(m):
                    if gcount[cur[i]] > 1:
                        for t in range(ng):
                            mark[i + t] = True
                duped = 0
                for i in range(n):
                    if mark[i]:
                        duped += word_len[w0 + i]
                dupe[d, ng - 5] = duped / tc
    return n_unique, entropy, total_chars, top, dupe, ldnoobw
