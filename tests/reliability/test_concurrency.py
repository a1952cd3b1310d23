"""Concurrent writers and readers on one storage root, as separate processes (the way two flow runs and a user's
`quarry sql` meet on a shared bucket):

* two flows writing different datasets while a reader queries the catalog in a loop: the reader only ever sees
  committed versions whose views hold exactly the manifest's rows;
* two runs of the same stages released at the same instant: they race to write the same shards and commit the same
  versions; exactly one manifest per version wins, the loser reuses it, and the rows equal an uncontended run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from storage import datasets
from tests.conftest import REPO
from tests.reliability import _harness as h

# One child = ingest (4 docs per shard) -> RPv2 signals -> MinHash signatures of the fixed harness inputs, serial
# engine, no Prefect: the storage layer is what races. It waits for `go` so that both children start together.
CHILD = r"""
import json, os, sys, time
from pathlib import Path
from tests.reliability import _harness as h
h._env()
import tasks.dedup.minhash as mh
import tasks.signals.quality_signals as qs
from tests.stages import ingest, run
from storage import datasets
from tasks.ingest.sources import IngestSource
root, dataset, inputs, ready, go = sys.argv[1:6]
srcs = [IngestSource(path=str(p), domain="web", lang="en") for p in sorted(Path(inputs).glob("*.jsonl"))]
Path(ready).touch()
while not os.path.exists(go):
    time.sleep(0.005)
ing = ingest(srcs, root=root, dataset=dataset, docs_per_shard=4, profile=h.serial())
sig = run("quality_signals", [ing], qs.QualitySignalsParams(language="en"), h.serial())
mhs = run("minhash_signatures", [ing], mh.MinhashSignaturesParams(), h.serial())
print(json.dumps({r.stage: [r.version, datasets.read_manifest(r)["created_at"]] for r in (ing, sig, mhs)}))
"""


def _start(root: Path, dataset: str, inputs: Path, tag: str, go: Path) -> tuple[subprocess.Popen, Path]:
    ready = root.parent / f"ready-{tag}"
    env = os.environ | {"PYTHONPATH": str(REPO), "QUARRY_PROGRESS": "0"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(root), dataset, str(inputs), str(ready), str(go)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, ready


def _run_together(children: list[tuple[Path, str]], inputs: Path, work: Path, read_root: Path | None = None):
    """Start every child, release them at once, and (optionally) query the catalog until all have exited."""
    go = work / f"go-{time.monotonic_ns()}"
    procs = [_start(root, ds, inputs, f"{i}-{go.name}", go) for i, (root, ds) in enumerate(children)]
    deadline = time.monotonic() + 300
    while not all(ready.exists() for _, ready in procs):
        assert all(p.poll() is None for p, _ in procs), [p.communicate()[1][-2000:] for p, _ in procs if p.poll()]
        assert time.monotonic() < deadline, "children never became ready"
        time.sleep(0.05)
    go.touch()
    reads = Counter()
    while any(p.poll() is None for p, _ in procs):
        if read_root is not None and read_root.exists():
            n, problems = h.check_catalog(str(read_root))
            assert not problems, problems  # a half-written version is never visible
            reads["catalog_opens"] += 1
            reads["views_checked"] += n
        else:
            time.sleep(0.05)
        assert time.monotonic() < deadline, "children did not finish"
    outs = []
    for p, _ in procs:
        out, err = p.communicate()
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return outs, reads


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    if not h.C4.is_file():
        pytest.skip(f"shared data not found at {h.C4}")
    folder = tmp_path_factory.mktemp("inputs")
    h.make_inputs(folder)
    return folder


def _doc_ids(root: Path, dataset: str, stage: str) -> Counter:
    ref = datasets.latest(str(root), dataset, stage)
    return Counter(datasets.read_table(ref, columns=["doc_id"]).column("doc_id").to_pylist())


def test_two_flows_write_different_datasets_while_a_reader_queries(inputs, tmp_path, capsys):
    root = tmp_path / "shared_root"
    (outs, reads) = _run_together([(root, "alpha"), (root, "beta")], inputs, tmp_path, read_root=root)
    assert reads["catalog_opens"] > 0  # the reader really ran while the writers wrote
    solo = tmp_path / "solo"
    (solo_out,), _ = _run_together([(solo, "alpha")], inputs, tmp_path)
    for ds, out in zip(("alpha", "beta"), outs, strict=True):
        # the same versions as an uncontended run (content-addressed; a derived version's hash includes its
        # dataset's name, so only alpha's can match), the same rows, manifests consistent
        if ds == "alpha":
            assert {k: v[0] for k, v in out.items()} == {k: v[0] for k, v in solo_out.items()}
        for stage in out:
            assert _doc_ids(root, ds, stage) == _doc_ids(solo, "alpha", stage)
    assert not [p for p in h.check_manifests(str(root)) if "temporaries left" not in p]
    assert not h.stray_temporaries(str(root))
    n, problems = h.check_catalog(str(root))
    assert n >= 6 and not problems
    with capsys.disabled():
        print(f"\nconcurrency: 2 writers x 3 stages + a reader: {reads['catalog_opens']} catalog opens, "
              f"{reads['views_checked']} views checked mid-write, 0 half-written versions seen")


def test_two_runs_of_the_same_stages_race_to_commit_one_version(inputs, tmp_path, capsys):
    root = tmp_path / "raced"
    solo = tmp_path / "solo"
    (solo_out,), _ = _run_together([(solo, "gamma")], inputs, tmp_path)
    outs, reads = _run_together([(root, "gamma"), (root, "gamma")], inputs, tmp_path, read_root=root)
    a, b = outs
    for stage in solo_out:
        assert a[stage][0] == b[stage][0] == solo_out[stage][0]  # both runs land in the same version
        assert a[stage][1] == b[stage][1]  # ... and read back the one manifest that won (same created_at)
        assert _doc_ids(root, "gamma", stage) == _doc_ids(solo, "gamma", stage)  # nothing lost or doubled
    per_stage = Counter(m["stage"] for m in h.committed(str(root)).values() if m["dataset"] == "gamma")
    assert all(v == 1 for v in per_stage.values()), per_stage  # one committed version per stage
    assert not [p for p in h.check_manifests(str(root)) if "temporaries left" not in p]
    assert not h.stray_temporaries(str(root))
    with capsys.disabled():
        print(f"\nrace: 2 runs of 3 stages committed {sum(per_stage.values())} versions once each; "
              f"{reads['catalog_opens']} catalog opens mid-race saw no partial version")
