"""The temporaries race, reproduced at the storage layer and repeated under CPU load: two processes write the same
shards of one version and commit it at the same instant, 20 times in a row, while two busy-loop processes load
every core. Before owner-tagged temporaries, one run's commit removed the other's half-written shard and that run
died with FileNotFoundError (the flaky `test_two_runs_of_the_same_stages_race_to_commit_one_version`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from storage import datasets
from tests.conftest import REPO

ROUNDS = int(os.environ.get("QUARRY_RACE_ROUNDS", "20"))

# Each writer: 6 shards of 2,000 rows (large enough that writes overlap), then the commit, released by `go`.
WRITER = r"""
import os, sys, time
import pyarrow as pa
from storage import datasets
root, go = sys.argv[1:3]
ref = datasets.DatasetRef(root, "race", "stage", "a" * 12)
tables = [pa.table({"doc_id": [f"{s}-{i}" for i in range(2000)], "text": ["x" * 200] * 2000}) for s in range(6)]
while not os.path.exists(go):
    time.sleep(0.001)
for s, t in enumerate(tables):
    datasets.write_shard(ref, datasets.shard_name(s), t)
    datasets.commit(datasets.DatasetRef(root, "race", f"other{os.getpid() % 7}", "b" * 12))  # a commit mid-write
m = datasets.commit(ref)
print(m["num_rows"], m["created_at"])
"""

BUSY = "import time\nend = time.time() + {s}\nwhile time.time() < end:\n    pass\n"


def test_two_writers_race_one_version_twenty_times_under_cpu_load(tmp_path, capsys):
    env = os.environ | {"PYTHONPATH": str(REPO)}
    busy = [subprocess.Popen([sys.executable, "-c", BUSY.format(s=600)]) for _ in range(2)]  # bounded: 10 min max
    outcomes = []
    try:
        for r in range(ROUNDS):
            root, go = tmp_path / f"r{r}", tmp_path / f"go{r}"
            procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(go)], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
            time.sleep(0.5)  # both imported and waiting
            go.touch()
            outs = [p.communicate(timeout=300) for p in procs]
            for p, (_out, err) in zip(procs, outs, strict=True):
                assert p.returncode == 0, f"round {r}: a writer failed:\n{err[-2000:]}"
            (rows_a, at_a), (rows_b, at_b) = (o.split() for o, _ in outs)
            assert rows_a == rows_b == "12000" and at_a == at_b  # one manifest won; both read it back
            ref = datasets.DatasetRef(str(root), "race", "stage", "a" * 12)
            assert datasets.read_table(ref, columns=["doc_id"]).num_rows == 12000
            assert not [n for n in os.listdir(ref.uri) if n.startswith("_tmp.") and not n.endswith("_manifest.json")]
            outcomes.append(json.dumps({"round": r, "rows": int(rows_a)}))
    finally:
        for b in busy:
            b.kill()
            b.wait()
    assert len(outcomes) == ROUNDS
    with capsys.disabled():
        print(f"\nrace under load: {ROUNDS} rounds of 2 writers x 6 shards + 12 foreign commits each, 0 failures")
