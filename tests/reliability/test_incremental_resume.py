"""A living corpus survives kill -9 (issue 30): batch C's curation, killed at its n-th commit point (a forked child
SIGKILLs itself just before or after an os.rename/replace under the root: no cleanup, like the OOM killer), resumes
to exactly the uninterrupted kept set, and neither the kill nor the resume touches a file of batches A and B or of
the indexes committed with them (an index commits with its batch or not at all: it is a new version, never an edit).

The executor runs the production stages on the serial profile (no Prefect, no Ray). The killed run is a *spawned*
child, not an os.fork of the test process: in the full suite that process holds Ray's and Prefect's threads, and a
forked child can inherit a lock one of them held and hang forever (it did, in the CI preview, at the first kill)."""

import json
import multiprocessing
import os

import pytest

from tests.conftest import shared_path
from tests.flows.test_incremental import _batches
from tests.reliability._harness import KillHook, serial


def _curate(batch_refs, prof):
    """Signatures, then exact and MinHash dedup against the earlier batches, then kept: per batch, in order."""
    from tasks.dedup import incremental
    from tasks.dedup.exact import ExactDedupParams
    from tasks.dedup.minhash import MinhashDedupParams, MinhashSignaturesParams
    from tasks.select.selection import KeptParams
    from tests import stages

    prior, kept = {}, []
    for b in batch_refs:
        docs = stages.run("minhash_signatures", [b], MinhashSignaturesParams(), prof)
        docs = incremental.run_section(stages.run, "exact_dedup", docs, ExactDedupParams(), prof, prior, str(b))
        docs = incremental.run_section(stages.run, "minhash_dedup", docs, MinhashDedupParams(num_partitions=2), prof,
                                       prior, str(b))
        kept.append(stages.run("kept", [docs], KeptParams(), prof))
        yield dict(prior), kept[-1]


def _killed_run(root: str, refs, event: str, n: int, when: str) -> None:
    """The spawned child: A and B (committed: no-ops), then C, SIGKILLed at the n-th commit point under root."""
    with KillHook(root, event, n, when):
        list(_curate(refs, serial()))
    os._exit(0)  # not killed: the parent's assertion names it


def _files(root) -> dict:
    return {p: os.stat(p).st_mtime_ns for p in (str(x) for x in root.rglob("*") if x.is_file())}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A root with batches A, B, C ingested and A, B curated (C is what the tests kill), and the reference: C
    curated uninterrupted in a copy of it."""
    import shutil

    from storage import datasets
    from tasks.ingest.sources import IngestSource
    from tests import stages

    shared_path("web", "c4_sample", "c4_sample.jsonl")
    tmp = tmp_path_factory.mktemp("xb-resume")
    prof = serial()
    refs = []
    for i, docs in enumerate(_batches()):
        f = tmp / "in" / f"batch{i}.jsonl"
        f.parent.mkdir(exist_ok=True)
        f.write_text("".join(json.dumps(d) + "\n" for d in docs))
        refs.append(stages.ingest([IngestSource(path=str(f), domain="web")], root=str(tmp / "base"), dataset="xb",
                                  docs_per_shard=25, profile=prof))
    list(_curate(refs[:2], prof))
    shutil.copytree(tmp / "base", tmp / "ref")
    steps = list(_curate(_at(tmp / "ref", refs), prof))
    reference = [sorted(datasets.read_table(k, columns=["doc_id"]).column(0).to_pylist()) for _, k in steps]
    return {"tmp": tmp, "refs": refs, "reference": reference, "index": steps[2][0]["exact_dedup"].version}


def _at(root, refs):
    from storage import datasets

    return [datasets.ref_from_string(str(root), str(r)) for r in refs]


@pytest.mark.parametrize("event,n,when", [("any", 3, "before"), ("any", 9, "after"), ("replace", 14, "before")])
def test_killed_batch_resumes_to_the_same_kept_set_and_earlier_batches_stay_untouched(base, tmp_path, event, n, when):
    import shutil

    from storage import datasets

    root = tmp_path / "store"
    shutil.copytree(base["tmp"] / "base", root)
    refs, prof = _at(root, base["refs"]), serial()
    before = _files(root)  # A and B curated, their indexes committed
    child = multiprocessing.get_context("spawn").Process(target=_killed_run, args=(str(root), refs, event, n, when))
    child.start()
    child.join(timeout=600)
    if child.is_alive():
        child.kill()
        pytest.fail("the killed run neither died nor finished in 600 s")
    assert child.exitcode == -9, f"it must die mid-batch by SIGKILL, got exit code {child.exitcode}"
    unchanged = {p for p, t in before.items() if "_pointers" not in p and "_leases" not in p}
    after_kill = _files(root)
    assert all(after_kill.get(p) == before[p] for p in unchanged)  # A, B and their indexes: not one file touched
    steps = list(_curate(refs, prof))  # the resume
    kept = [sorted(datasets.read_table(k, columns=["doc_id"]).column(0).to_pylist()) for _, k in steps]
    assert kept == base["reference"]  # nothing duplicated, nothing lost
    assert all(_files(root).get(p) == before[p] for p in unchanged)
    assert steps[2][0]["exact_dedup"].version == base["index"]  # C's index: the version an uninterrupted run commits
