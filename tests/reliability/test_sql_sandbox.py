"""`quarry sql` runs on a sandboxed catalog by default: files outside the root are unreadable, nothing can be
written (a committed shard used to be overwritable with `COPY ... TO '<shard>' (use_tmp_file false)`, because
DuckDB lets an allowed path be written), and every view, pinned version and file under the root still reads, on a
local root and on an S3 root (moto). `--allow-file-access` gives the old unsandboxed connection."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

import quarry_cli
from storage import datasets
from storage.datasets import DatasetRef
from tests.conftest import moto_s3

runner = CliRunner()


def _cli(*args):
    return runner.invoke(quarry_cli.app, ["sql", *map(str, args)], catch_exceptions=False)


def _store(root: str) -> tuple[DatasetRef, DatasetRef]:
    old = DatasetRef(root, "toy", "ingest", "a" * 12)
    datasets.write_table(old, pa.table({"doc_id": ["a", "b"]}))
    new = datasets.derive([old], "signals", None, {"n": 1})
    datasets.write_table(new, pa.table({"doc_id": ["a", "b"], "n": [1, 2]}), parents=[old])
    return old, new


@pytest.fixture
def local(tmp_path):
    root = str(tmp_path / "store")
    old, new = _store(root)
    return root, old, new


def test_files_outside_the_root_are_refused_by_default_and_readable_with_the_flag(local):
    root, _, _ = local
    refused = _cli("--root", root, "select count(*) n from read_csv('/etc/passwd', sep=':', header=false)")
    assert refused.exit_code == 1 and "Permission Error" in refused.output and "--allow-file-access" in refused.output
    assert "root:" not in refused.output  # not one line of the file
    sneaky = _cli("--root", root, f"select * from read_text('{root}/../../../etc/passwd')")
    assert sneaky.exit_code == 1 and "Permission Error" in sneaky.output
    allowed = _cli("--root", root, "--allow-file-access", "-f", "json",
                   "select count(*) > 0 n from read_csv('/etc/passwd', sep=':', header=false)")
    assert allowed.exit_code == 0 and json.loads(allowed.output) == {"n": True}, allowed.output


@pytest.mark.parametrize("statement", [
    "copy (select 'x' as doc_id) to '{shard}' (format parquet, use_tmp_file false)",
    "copy (select 1) to '{root}/evil.csv'",
    "export database '{root}/dump'",
    "attach '{root}/other.duckdb' as o",
    "install httpfs",
    "set enable_external_access = true",
    "select 1; copy (select 1) to '{root}/evil.csv'",
])
def test_nothing_is_written_or_reconfigured_by_default(local, statement):
    root, old, _ = local
    shard = next((Path(root) / "toy" / "ingest" / old.version).glob("part-*.parquet"))
    before = datasets.read_table(old).to_pylist()
    files_before = sorted(p.name for p in Path(root).rglob("*"))
    out = _cli("--root", root, statement.format(shard=shard, root=root))
    assert out.exit_code == 1 and "refused" in out.output, out.output
    assert datasets.read_table(old).to_pylist() == before
    assert sorted(p.name for p in Path(root).rglob("*")) == files_before


def test_views_pinned_versions_and_files_under_the_root_still_read(local):
    root, old, new = local
    q = (f'select (select count(*) from "toy__ingest@{old.version[:6]}") pinned, count(*) n, sum(n)::int s, '
         f"(select count(*) from read_json('{root}/toy/ingest/{old.version}/_manifest.json')) manifests "
         "from toy__signals")
    out = _cli("--root", root, "-f", "json", q)
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == {"pinned": 2, "n": 2, "s": 3, "manifests": 1}


def test_pivot_reads_in_the_sandbox_and_cannot_carry_a_write(local):
    """DuckDB types a PIVOT as MULTI (an enum, then the query): it is a query, and a write beside it is still refused
    (the experiment-comparison panel is a PIVOT)."""
    root, _, _ = local
    out = _cli("--root", root, "-f", "json", "PIVOT (select doc_id, n from toy__signals) ON doc_id USING first(n)")
    assert out.exit_code == 0 and json.loads(out.output) == {"a": 1, "b": 2}, out.output
    out = _cli("--root", root, f"PIVOT toy__signals ON doc_id USING sum(n); copy (select 1) to '{root}/evil.csv'")
    assert out.exit_code == 1 and "refused" in out.output and not (Path(root) / "evil.csv").exists()


def test_an_s3_root_is_queryable_in_the_sandbox():
    with moto_s3("quarry-sql-sandbox"):
        root = "s3://quarry-sql-sandbox/root"
        _store(root)
        out = _cli("--root", root, "-f", "json", "select count(*) n, sum(n)::int s from toy__signals")
        assert out.exit_code == 0, out.output
        assert json.loads(out.output) == {"n": 2, "s": 3}
        refused = _cli("--root", root, "select * from read_csv('/etc/passwd')")
        assert refused.exit_code == 1 and "Permission Error" in refused.output
