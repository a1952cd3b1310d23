"""Decontamination throughput, one pinned core: quarry's decontaminate stage function vs datatrove's
NGramsDecontFilter, 13-grams, on the same documents (the C4 sample with 30 real ARC-Easy items planted) against
the same eval items (all ten local tasks; question + gold answer per item). datatrove's indexer reads lighteval's
task registry (hub datasets), so its index is built here with its own NGramsDecontIndexer.compute_hashes over our
local items. Index build time is printed apart: it is paid once per eval-set version.

    python benchmarks/decontaminate.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from _common import REPO, SHARED, jsonl_texts, line, pin_one_core, timed

sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    pin_one_core()
    from datatrove.data import Document
    from datatrove.pipeline.decont import NGramsDecontConfig, NGramsDecontFilter, NGramsDecontIndexer
    from datatrove.utils.hashing import HashConfig

    from tasks.filter import decontaminate as dc

    eval_dir = SHARED / "eval"
    texts = jsonl_texts(SHARED / "web" / "c4_sample" / "c4_sample.jsonl")
    arc = [json.loads(x) for x in (eval_dir / "gauntlet" / "arc_easy.jsonl").read_text().split("\n") if x.strip()]
    for k in range(30):
        item = arc[k * 50]
        texts[k * 30] += f" {item['query'].removeprefix('Question: ')} {item['choices'][item['gold']]}"

    with tempfile.TemporaryDirectory() as tmp:
        params = dc.DecontaminateParams(eval_dir=str(eval_dir), n=13, cache_dir=tmp)
        t0 = time.perf_counter()
        dc.eval_index(params)
        t_index = time.perf_counter() - t0
        out, t_ours = timed(dc.decontaminate, pa.table({"text": texts}), params, repeat=args.repeat)

        # sha1/64: datatrove's xxhash path passes str to xxhash 4, which wants bytes
        cfg = NGramsDecontConfig(n_grams=13, find_overlap_ngrams=True, hash_config=HashConfig(hash_fc="sha1"))
        indexer = object.__new__(NGramsDecontIndexer)  # __new__ checks for lighteval, which this step never uses
        NGramsDecontIndexer.__init__(indexer, output_folder=tmp + "/dt", config=cfg)
        t0 = time.perf_counter()
        for task, _, segments in dc.eval_items(eval_dir, params.tasks):
            hashes = indexer.compute_hashes(segments[0])
            folder = Path(tmp) / "dt"
            folder.mkdir(exist_ok=True)
            with open(folder / f"{task}.index.hashes", "ab") as f:
                np.array(hashes, dtype=cfg.hash_config.np_descr).tofile(f)
        t_dt_index = time.perf_counter() - t0
        filt = NGramsDecontFilter(index_folder=tmp + "/dt", config=cfg)
        filt.load_index_hashes()
        docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
        theirs, t_dt = timed(lambda: [filt.filter(d) for d in docs], repeat=args.repeat)

    ours_hit = {i for i, r in enumerate(out.column("drop_reason").to_pylist()) if r}
    dt_hit = {i for i, r in enumerate(theirs) if r is not True}
    print(f"{len(texts)} documents, 30 planted ARC items: quarry flags {len(ours_hit)}, datatrove {len(dt_hit)}, "
          f"both {len(ours_hit & dt_hit)}; index build quarry {t_index:.1f} s, datatrove {t_dt_index:.1f} s")
    print(line("datatrove", texts, t_dt))
    print(line("quarry", texts, t_ours, t_dt))


if __name__ == "__main__":
    main()
