"""A storage root the cluster's workers cannot share must fail loudly, never commit empty versions with exit 0."""

from __future__ import annotations

import pyarrow as pa
import pytest

from ray_cluster import executor, runtime
from ray_cluster.executor import core
from storage import datasets
from storage.datasets import StorageError
from tasks import registry
from tasks.ingest.sources import IngestSource
from tests import stages
from tests.conftest import shared_path


def _sources():
    return [IngestSource(path=str(shared_path("web", "c4_sample", "c4_sample.jsonl")), domain="web", limit=20)]


def test_a_memory_root_on_a_ray_profile_is_refused_before_any_work():
    """memory:// lives in one process: Ray workers would each write to their own copy (0 rows committed)."""
    with pytest.raises(StorageError, match="memory") as err:
        stages.ingest(_sources(), root="memory://quarry-not-shared", dataset="m", docs_per_shard=10,
                      profile=runtime.load_profile("local"))
    assert "serial" in str(err.value)  # the message says what to use instead
    fs, _ = datasets.filesystem("memory://quarry-not-shared")
    assert not fs.exists("/quarry-not-shared/m")  # nothing was written


def test_a_memory_root_on_the_serial_profile_works_and_keeps_every_row():
    ref = stages.ingest(_sources(), root="memory://quarry-serial", dataset="m", docs_per_shard=10,
                        profile=runtime.load_profile("serial"))
    assert datasets.read_manifest(ref)["num_rows"] == 20


def test_rows_the_workers_reported_but_the_driver_cannot_see_fail_the_commit(tmp_path):
    """The commit compares what the workers said they wrote with what the driver can read (the symptom of a
    root that is local to each worker): a mismatch is an error and nothing is committed."""
    src = datasets.DatasetRef(str(tmp_path), "toy", "ingest", "a" * 12)
    datasets.write_table(src, pa.table({"doc_id": ["a", "b"], "text": ["x", "y"]}))
    stage = registry.stage("kept")
    dst = datasets.derive([src], stage.name, executor.code_of(stage), None)
    datasets.write_shard(dst, "part-00000.parquet", pa.table({"doc_id": ["a"]}))
    with pytest.raises(StorageError, match="not shared with the cluster's workers"):
        core._commit(stage, dst, [src], None, {}, expected={"part-00000.parquet": 1, "part-00001.parquet": 5})
    assert not datasets.is_committed(dst)
    core._commit(stage, dst, [src], None, {}, expected={"part-00000.parquet": 1})  # what it really wrote
    assert datasets.is_committed(dst)
