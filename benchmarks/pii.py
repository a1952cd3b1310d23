"""PII throughput and recall, one pinned core: quarry's pii stage function (e-mails, IPv4/IPv6, phones, secrets)
vs datatrove's PIIFormatter (e-mails, IPv4), on the same documents: the C4 sample with planted values (the set of
tests/tasks/filter/test_pii.py) and the shared code sample. Recall = planted values no longer in the output, per type.

    python benchmarks/pii.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys

import pyarrow as pa
from _common import REPO, SHARED, jsonl_texts, line, pin_one_core, timed

sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    pin_one_core()
    from datatrove.pipeline.formatters import PIIFormatter

    from tasks.filter.pii import PiiParams, pii
    from tests.tasks.filter.test_pii import _planted, _recall

    planted_texts, planted = _planted(n_docs=300)
    texts = planted_texts + jsonl_texts(SHARED / "domains" / "github_code" / "github_code_sample.jsonl")
    ours, t_ours = timed(lambda: pii(pa.table({"text": texts}), PiiParams()).column("text").to_pylist(),
                         repeat=args.repeat)
    dt = PIIFormatter()
    theirs, t_dt = timed(lambda: [dt.format(t) for t in texts], repeat=args.repeat)
    r_ours, r_dt = _recall(planted, ours[: len(planted_texts)]), _recall(planted, theirs[: len(planted_texts)])
    print(f"{len(texts)} documents ({len(planted)} planted values)")
    print("recall   " + "  ".join(f"{k} {r_ours[k]:.0%}/{r_dt.get(k, 0):.0%}" for k in sorted(r_ours))
          + "  (quarry/datatrove)")
    print(line("datatrove", texts, t_dt))
    print(line("quarry", texts, t_ours, t_dt))


if __name__ == "__main__":
    main()
