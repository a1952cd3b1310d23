"""Committed data proves itself, end to end through the executor (issue 34).

A committed ingest (and the quality_signals layer on it) is damaged on disk the ways disks and people damage files:
two shards swapped, a byte flipped in a data page or in the footer, a shard truncated, emptied or deleted. Each is
found by ``quarry verify`` (exit 1, naming the file and what differs), by an open (``datasets.read_table``), and by
the reuse check of a re-run, which recomputes the version (never "already committed, skipping") and leaves it
whole: the wide view of the layer equals the undamaged one again. A run SIGKILLed after its shards are fsynced but
before its manifest resumes without rewriting them; a copied root is read whole from its new place with the
original deleted.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal

import pytest
from typer.testing import CliRunner

import quarry_cli
from ray_cluster import runtime
from storage import catalog, datasets, verify
from storage.datasets import DatasetRef, StorageError
from tasks.ingest.sources import IngestSource
from tests import stages
from tests.conftest import shared_path
from tests.reliability._harness import KillHook
from tests.storage import test_verify as damage

DATASET = "integ"
CORRUPTIONS = {damage.swap: "size", damage.flip_data: "checksum", damage.flip_footer: "checksum",
               damage.truncate: "size", damage.empty: "size", damage.delete: "missing"}


def _sources():
    return [IngestSource(path=str(shared_path("web", "c4_sample", "c4_sample.jsonl")), domain="web", limit=40)]


def _ingest(root: str) -> DatasetRef:
    return stages.ingest(_sources(), root=root, dataset=DATASET, docs_per_shard=10, profile=runtime.load_profile("serial"))


def _signals(ing: DatasetRef) -> DatasetRef:
    import tasks.signals.quality_signals as qs

    return stages.run("quality_signals", [ing], qs.QualitySignalsParams(language="en"), runtime.load_profile("serial"))


def _wide(ref: DatasetRef):
    return datasets.read_table(ref, columns=["doc_id", "text", "rps_doc_word_count"]).to_pylist()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("integrity") / "base")
    ing = _ingest(root)
    sig = _signals(ing)
    return root, ing, sig, _wide(sig)


def _copy(base_root: str, tmp_path) -> str:
    root = str(tmp_path / "root")
    shutil.copytree(base_root, root)
    return root


def _cli_verify(root: str, *args: str):
    return CliRunner().invoke(quarry_cli.app, ["verify", *args, "--root", root], catch_exceptions=False)


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS), ids=lambda f: f.__name__)
def test_damage_to_a_committed_input_is_found_everywhere_and_a_rerun_heals_it(base, tmp_path, caplog, corrupt):
    root = _copy(base[0], tmp_path)
    ing, sig = (DatasetRef(root, r.dataset, r.stage, r.version) for r in base[1:3])
    bad = damage._path(ing, 0)
    corrupt(ing)
    # quarry verify: exit 1, the file and what differs (the layer above may add that it no longer lines up)
    out = _cli_verify(root, DATASET)
    assert out.exit_code == 1, out.output
    assert f"{bad}: {CORRUPTIONS[corrupt]}:" in out.output
    assert "3 versions checked" in out.output  # ingest, its quarantine, quality_signals
    assert _cli_verify(root, f"{DATASET}/ingest_quarantine").exit_code == 0
    # an open names the file
    with pytest.raises(StorageError) as err:
        datasets.read_table(ing)
    assert bad in str(err.value)
    # a re-run verifies before it reuses: the damaged version is recomputed, not skipped
    with caplog.at_level(logging.INFO, logger="quarry"):
        assert _ingest(root) == ing
        _signals(ing)
    assert f"{ing} is committed but fails verification ({bad}: {CORRUPTIONS[corrupt]}" in caplog.text
    assert f"{ing} already committed" not in caplog.text
    assert f"{sig} already committed and verified, skipping" in caplog.text
    assert verify.verify_root(root)[1] == []
    assert _wide(sig) == base[3]  # every doc carries its own signals again


def test_damage_to_a_committed_layer_is_recomputed_by_its_stage(base, tmp_path, caplog):
    root = _copy(base[0], tmp_path)
    ing, sig = (DatasetRef(root, r.dataset, r.stage, r.version) for r in base[1:3])
    damage.flip_data(sig)
    with caplog.at_level(logging.INFO, logger="quarry"):
        _signals(ing)
    assert f"{sig} is committed but fails verification ({damage._path(sig, 0)}: checksum" in caplog.text
    assert verify.verify_root(root)[1] == [] and _wide(sig) == base[3]


def test_a_kill_between_the_data_fsync_and_the_manifest_resumes_without_rewriting(base, tmp_path, caplog):
    """SIGKILL just before the first manifest link (every shard written, fsynced and marked): nothing is committed,
    every shard is trusted, and the resume commits them as they are."""
    root = str(tmp_path / "root")
    pid = os.fork()
    if pid == 0:  # the child dies at the commit point, without cleanup
        try:
            with KillHook(root, "link", 1, "before"):
                _ingest(root)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    ing = DatasetRef(root, *str(base[1]).split("/"))
    assert not datasets.is_committed(ing)
    written = {n: os.stat(os.path.join(ing.uri, n)).st_mtime_ns for n in datasets.existing_shards(ing)}
    assert len(written) == 4 and not datasets.untrusted_shards(ing)
    with caplog.at_level(logging.WARNING, logger="quarry"):
        _ingest(root)
    assert "replacing" not in caplog.text and "rewriting" not in caplog.text
    assert {n: os.stat(os.path.join(ing.uri, n)).st_mtime_ns for n in written} == written
    assert verify.verify_root(root)[1] == []
    assert datasets.read_table(ing).equals(datasets.read_table(base[1]))


def test_a_copied_root_is_self_contained(base, tmp_path, caplog):
    src = _copy(base[0], tmp_path / "a")
    dst = str(tmp_path / "b")
    shutil.copytree(src, dst)
    shutil.rmtree(src)
    ing = DatasetRef(dst, *str(base[1]).split("/"))
    with caplog.at_level(logging.INFO, logger="quarry"):
        sig = _signals(_ingest(dst))
    assert "fails verification" not in caplog.text and caplog.text.count("already committed and verified") == 2
    assert _wide(sig) == base[3]
    con = catalog.connect(dst, sandbox=True)  # the dashboard's connection reads only the copy's listed files
    try:
        assert con.execute(f"select count(*) from {DATASET}__quality_signals").fetchone()[0] == len(base[3])
        files = [r[0] for r in con.execute("select unnest(files) from versions").fetchall()]
        assert files and all(f.startswith(dst) for f in files)
    finally:
        con.close()
    assert verify.verify_root(dst)[1] == [] and datasets.files(ing)[0].startswith(dst)
