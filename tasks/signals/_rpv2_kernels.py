"""Numba kernels behind `tasks.signals.quality_signals`: every rule-based RedPajama-V2 signal over a whole batch at once.

The batch arrives as two UTF-32 code-point arrays (see `quality_signals._views`):
  * `raw`  -- the documents concatenated with no separator (`raw_off` gives the boundaries);
  * `norm` -- `NFD(lower(strip_ascii_punct("\n".join(docs))))`, i.e. RPv2's `normalize()` minus the per-line
    whitespace strip/collapse, which the kernels apply on the fly (a word is a maximal run of non-space chars,
    so `" ".join(words)` is exactly RPv2's `normalized_content`).
Character classes come from lookup tables built with CPython's own `str` predicates (`_char_table`), so
"\\w", "\\s", `isupper`, `isnumeric` mean exactly what they mean in the reference implementation.

Reference semantics: togethercomputer/RedPajama-Data app/src (commit 6d2cee9), restated in
../shared/specs/rpv2_signals.md; each kernel names the RPv2 class it mirrors.

The per-word statistics (n-gram duplication, entropy, LDNOOBW) are in `_rpv2_word_kernels.py`, over the same
hash helpers (`fnv`, `same_span`).
"""

from __future__ import annotations

import numpy as np

from tasks.common import numba_cache as _numba_cache

_numba_cache.ensure()  # a writable kernel cache before numba decorates anything (see that module)

from numba import njit  # noqa: E402

# bit flags in the per-code-point table
F_WORD = 1  # re "\w" for str patterns: str.isalnum() or "_"
F_SPACE = 2  # str.isspace() == re "\s" == what str.strip()/split() remove
F_UPPER = 4  # single-char str.isupper()
F_LOWER_OR_TITLE = 8  # str.islower() or category Lt: either makes a token fail str.isupper()
F_NUMERIC = 16  # str.isnumeric()
F_ASCII_ALPHA = 32  # [a-zA-Z] (RPS_Doc_Frac_No_Alph_Words uses an ASCII-only regex)
# WordPunct tokens: nltk's RegexpTokenizer compiles `\w+|[^\w\s]+` with the `regex` engine (nltk/redos.py), whose
# \w (Alphabetic | Mark | Nd | Pc | Join_Control) and \s differ from stdlib re: "chi²" is 2 tokens, a combining
# mark joins the digits after it. The gold values were produced that way, so tokens use these two flags.
F_TOK_WORD = 64
F_TOK_SPACE = 128

_NL = 10
_DOT = 46
_BANG = 33
_QMARK = 63
_HASH = 35
_LCURLY = 123
_RCURLY = 125
_ELLIPSIS = 0x2026
_RDQUO = 0x201D  # "”", one of RPv2's terminal punctuation marks
# RPS_Lines_Start_With_Bulletpoint.BULLET_POINT_SYMBOLS
BULLETS = np.array([0x2022, 0x2023, 0x25B6, 0x25C0, 0x25E6, 0x25A0, 0x25A1, 0x25AA, 0x25AB, 0x2013], dtype=np.uint32)
JAVASCRIPT = np.array([ord(c) for c in "javascript"], dtype=np.uint32)
LOREM = np.array([ord(c) for c in "lorem"], dtype=np.uint32)
IPSUM = np.array([ord(c) for c in "ipsum"], dtype=np.uint32)

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


@njit(cache=True, inline="always")
def fnv(arr, s, e, salt):
    h = _FNV_OFFSET ^ np.uint64(salt)
    for k in range(s, e):
        h = (h ^ np.uint64(arr[k])) * _FNV_PRIME
    return h


@njit(cache=True, inline="always")
def same_span(a, sa, la, b, sb, lb):
    if la != lb:
        return False
    for k in range(la):
        if a[sa + k] != b[sb + k]:
            return False
    return True


@njit(cache=True)
def build_string_set(cps, off, salts):
    """Open-addressing set over strings given as code-point slices `cps[off[i]:off[i+1]]` salted by `salts[i]`
    (the language id). Returns the slot table (-1 = empty; otherwise the string index)."""
    n = off.shape[0] - 1
    cap = 16
    while cap < 2 * n + 2:
        cap *= 2
    slots = np.full(cap, -1, np.int64)
    mask = np.uint64(cap - 1)
    for i in range(n):
        h = fnv(cps, off[i], off[i + 1], salts[i])
        p = h & mask
        while True:
            j = slots[p]
            if j == -1:
                slots[p] = i
                break
            if salts[j] == salts[i] and same_span(cps, off[j], off[j + 1] - off[j], cps, off[i], off[i + 1] - off[i]):
                break  # duplicate entry
            p = (p + np.uint64(1)) & mask
    return slots


@njit(cache=True, inline="always")
def _set_contains(slots, cps, off, salts, arr, s, e, salt):
    mask = np.uint64(slots.shape[0] - 1)
    p = fnv(arr, s, e, salt) & mask
    while True:
        j = slots[p]
        if j == -1:
            return False
        if salts[j] == salt and same_span(cps, off[j], off[j + 1] - off[j], arr, s, e - s):
            return True
        p = (p + np.uint64(1)) & mask


@njit(cache=True)
def raw_pass(raw, raw_off, table, doc_lang, sw_slots, sw_cps, sw_off, sw_salt):
    """Signals over the raw text: lines (RPS_Lines_* on raw_lines), WordPunct tokens (`\\w+|[^\\w\\s]+`), symbols,
    braces and sentences. Returns per-doc and per-line arrays (lines flattened; `line_off` indexes them)."""
    n_docs = raw_off.shape[0] - 1
    n_nl = 0
    for k in range(raw.shape[0]):
        if raw[k] == _NL:
            n_nl += 1
    max_lines = n_nl + n_docs
    line_start = np.empty(max_lines, np.int64)
    line_end = np.empty(max_lines, np.int64)
    line_upper = np.empty(max_lines, np.float64)  # unrounded
    line_term = np.empty(max_lines, np.float64)
    line_bullet = np.empty(max_lines, np.float64)
    line_off = np.zeros(n_docs + 1, np.int64)
    n_newlines = np.zeros(n_docs, np.int64)
    n_ellipsis_lines = np.zeros(n_docs, np.int64)
    n_raw_words = np.zeros(n_docs, np.int64)
    n_alpha_words = np.zeros(n_docs, np.int64)
    n_caps_words = np.zeros(n_docs, np.int64)
    n_stop_words = np.zeros(n_docs, np.int64)
    n_symbols = np.zeros(n_docs, np.int64)
    n_curly = np.zeros(n_docs, np.int64)
    n_sentences = np.zeros(n_docs, np.int64)
    li = 0
    for d in range(n_docs):
        s0 = raw_off[d]
        e0 = raw_off[d + 1]
        lang = doc_lang[d]
        # ---- lines: regex ([^\n]*\n|[^\n]+$); the line keeps its "\n"
        ls = s0
        while ls < e0:
            le = ls
            while le < e0 and raw[le] != _NL:
                le += 1
            if le < e0:
                le += 1  # include the newline
                n_newlines[d] += 1
            up = 0
            for k in range(ls, le):
                if table[raw[k]] & F_UPPER:
                    up += 1
            # last / first non-space chars (rstrip / lstrip)
            last = le - 1
            while last >= ls and table[raw[last]] & F_SPACE:
                last -= 1
            first = ls
            while first < le and table[raw[first]] & F_SPACE:
                first += 1
            term = 0.0
            ell = False
            if last >= ls:
                c = raw[last]
                if c == _DOT or c == _BANG or c == _QMARK or c == _RDQUO:
                    term = 1.0
                if c == _ELLIPSIS:
                    ell = True
                elif last - 2 >= ls and c == _DOT and raw[last - 1] == _DOT and raw[last - 2] == _DOT:
                    ell = True
            bullet = 0.0
            if first < le:
                c = raw[first]
                for b in BULLETS:
                    if c == b:
                        bullet = 1.0
                        break
            line_start[li] = ls - s0
            line_end[li] = le - s0
            line_upper[li] = up / (le - ls)
            line_term[li] = term
            line_bullet[li] = bullet
            if ell:
                n_ellipsis_lines[d] += 1
            li += 1
            ls = le
        line_off[d + 1] = li
        # ---- WordPunct tokens, symbols, braces
        dots = 0
        for k in range(s0, e0):
            c = raw[k]
            if c == _DOT:
                dots += 1
            else:
                n_symbols[d] += dots // 3  # str.count("...") does not overlap: a run of k dots holds k // 3
                dots = 0
                if c == _HASH or c == _ELLIPSIS:
                    n_symbols[d] += 1
                elif c == _LCURLY or c == _RCURLY:
                    n_curly[d] += 1
        n_symbols[d] += dots // 3
        k = s0
        while k < e0:
            f = table[raw[k]]
            if f & F_TOK_SPACE:
                k += 1
                continue
            is_word = f & F_TOK_WORD
            ts = k
            has_alpha = False
            has_upper = False
            has_lower = False
            while k < e0:
                f2 = table[raw[k]]
                if (f2 & F_TOK_SPACE) or ((f2 & F_TOK_WORD) != is_word):
                    break
                if f2 & F_ASCII_ALPHA:
                    has_alpha = True
                if f2 & F_UPPER:
                    has_upper = True
                if f2 & F_LOWER_OR_TITLE:
                    has_lower = True
                k += 1
            n_raw_words[d] += 1
            if has_alpha:
                n_alpha_words[d] += 1
            if has_upper and not has_lower:
                n_caps_words[d] += 1
            if sw_slots.shape[0] > 0 and _set_contains(sw_slots, sw_cps, sw_off, sw_salt, raw, ts, k, lang):
                n_stop_words[d] += 1
        # ---- sentences: len(re.findall(r"\b[^.!?]+[.!?]*", raw))
        k = s0
        while k < e0:
            c = raw[k]
            is_term = c == _DOT or c == _BANG or c == _QMARK
            this_w = (table[c] & F_WORD) != 0
            prev_w = k > s0 and (table[raw[k - 1]] & F_WORD) != 0
            if not is_term and this_w != prev_w:
                n_sentences[d] += 1
                while k < e0 and not (raw[k] == _DOT or raw[k] == _BANG or raw[k] == _QMARK):
                    k += 1
                while k < e0 and (raw[k] == _DOT or raw[k] == _BANG or raw[k] == _QMARK):
                    k += 1
            else:
                k += 1
    return (
        line_off, line_start[:li], line_end[:li], line_upper[:li], line_term[:li], line_bullet[:li],
        n_newlines, n_ellipsis_lines, n_raw_words, n_alpha_words, n_caps_words, n_stop_words,
        n_symbols, n_curly, n_sentences,
    )


@njit(cache=True, inline="always")
def _starts(arr, s, e, pat):
    n = pat.shape[0]
    if e - s < n:
        return False
    for t in range(n):
        if arr[s + t] != pat[t]:
            return False
    return True


@njit(cache=True, inline="always")
def _ends_prev(norm, j, first_start, wl):
    n = LOREM.shape[0]
    if wl < n:
        return False
    s = first_start[j] + wl - n
    for t in range(n):
        if norm[s + t] != LOREM[t]:
            return False
    return True


@njit(cache=True)
def norm_pass(norm, table, n_newlines, line_off):
    """Signals over the normalized text. `norm` holds the documents joined by "\\n"; document d owns
    `n_newlines[d] + 1` newline-separated segments, of which the first `line_off[d+1]-line_off[d]` are its lines
    (RPv2 `normalized_lines`; a trailing empty segment is not a line). Words get batch-global ids (exact string
    identity via a hash set keyed on code points). Returns per-line and per-doc arrays plus word ids/lengths."""
    n_docs = n_newlines.shape[0]
    n_lines = line_off[n_docs]
    ln_words = np.zeros(n_lines, np.int64)
    ln_len = np.zeros(n_lines, np.int64)
    ln_numeric = np.zeros(n_lines, np.int64)
    ln_js = np.zeros(n_lines, np.int64)
    norm_len = np.zeros(n_docs, np.int64)
    lorem_candidate = np.zeros(n_docs, np.bool_)
    # upper bound on words: every word is followed by a space or newline or the end
    max_words = 1
    for k in range(norm.shape[0]):
        if table[norm[k]] & F_SPACE:
            max_words += 1
    word_id = np.empty(max_words, np.int64)
    word_len = np.empty(max_words, np.int64)
    word_off = np.zeros(n_docs + 1, np.int64)
    cap = 16
    while cap < 2 * max_words:
        cap *= 2
    slots = np.full(cap, -1, np.int64)
    mask = np.uint64(cap - 1)
    first_start = np.empty(max_words, np.int64)  # per distinct word: where its code points live in `norm`
    first_len = np.empty(max_words, np.int64)
    n_distinct = 0
    wi = 0
    k = 0
    nlen = norm.shape[0]
    for d in range(n_docs):
        n_seg = n_newlines[d] + 1
        n_doc_lines = line_off[d + 1] - line_off[d]
        chars = 0
        doc_w0 = wi
        for sg in range(n_seg):
            seg_words = 0
            seg_chars = 0
            while k < nlen and norm[k] != _NL:
                if table[norm[k]] & F_SPACE:
                    k += 1
                    continue
                ws = k
                numeric = 0
                while k < nlen and norm[k] != _NL and not (table[norm[k]] & F_SPACE):
                    if table[norm[k]] & F_NUMERIC:
                        numeric += 1
                    k += 1
                wl = k - ws
                # intern the word
                h = fnv(norm, ws, k, 0)
                p = h & mask
                while True:
                    j = slots[p]
                    if j == -1:
                        slots[p] = n_distinct
                        first_start[n_distinct] = ws
                        first_len[n_distinct] = wl
                        word_id[wi] = n_distinct
                        n_distinct += 1
                        break
                    if same_span(norm, first_start[j], first_len[j], norm, ws, wl):
                        word_id[wi] = j
                        break
                    p = (p + np.uint64(1)) & mask
                word_len[wi] = wl
                # lorem ipsum needs " ".join(words) to contain "lorem ipsum": a word ending in "lorem" followed by
                # one starting with "ipsum" (RPS_Doc_Lorem_Ipsum's substring pre-check); exact count done in Python
                if wi > doc_w0 and wl >= 5 and _starts(norm, ws, k, IPSUM) and _ends_prev(norm, word_id[wi - 1],
                                                                                        first_start, word_len[wi - 1]):
                    lorem_candidate[d] = True
                wi += 1
                seg_words += 1
                seg_chars += wl
                if sg < n_doc_lines:
                    ln_numeric[line_off[d] + sg] += numeric
                    if same_span(norm, ws, wl, JAVASCRIPT, 0, JAVASCRIPT.shape[0]):
                        ln_js[line_off[d] + sg] += 1
            k += 1  # skip the "\n" (or step past the end)
            if sg < n_doc_lines:
                ln_words[line_off[d] + sg] = seg_words
                ln_len[line_off[d] + sg] = seg_chars + (seg_words - 1 if seg_words > 0 else 0)
            chars += seg_chars
        word_off[d + 1] = wi
        nw = wi - doc_w0
        norm_len[d] = chars + (nw - 1 if nw > 0 else 0)
    return ln_words, ln_len, ln_numeric, ln_js, norm_len, lorem_candidate, word_id[:wi], word_len[:wi], word_off, \
        first_start[:n_distinct], first_len[:n_distinct], slots, n_distinct
