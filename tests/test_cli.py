"""The `quarry` CLI's catalog and service commands on a small real store (no flow runs: versions are committed with
storage.datasets directly), run in-process through typer's test runner; `quarry dashboard` as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner

import quarry_cli
from storage import datasets
from storage.datasets import DatasetRef
from tests.conftest import REPO

runner = CliRunner()


def _cli(*args: str, input: str | None = None):
    return runner.invoke(quarry_cli.app, [str(a) for a in args], input=input, catch_exceptions=False)


def _stage(root: str, parents: list[DatasetRef], stage: str, n: int, dataset: str = "toy", tag: str = "") -> DatasetRef:
    if parents:
        ref = datasets.derive(parents, stage, None, {"n": n, "tag": tag})
    else:
        ref = DatasetRef(root, dataset, stage, datasets.make_version(dataset, stage, str(n), tag))
    datasets.write_table(ref, pa.table({"doc_id": [f"d{i}" for i in range(n)]}), parents=parents)
    return ref


@pytest.fixture()
def store(tmp_path):
    """toy: ingest -> hashes -> keepers, dedup(hashes, keepers) -> kept, made from a recipe outside datasets_cfg/
    (recorded in the manifests), plus an older ingest; orphan: a dataset no recipe writes."""
    root = str(tmp_path / "store")
    recipe = tmp_path / "recipes" / "toy.yaml"
    recipe.parent.mkdir()
    recipe.write_text(yaml.safe_dump({"dataset": "toy", "ingest": {"sources": [{"path": str(tmp_path)}]}}))
    old = _stage(root, [], "ingest", 2, tag="old")
    time.sleep(0.01)
    with datasets.using_run(recipe=str(recipe), flow_run_id="run-1"):
        ingest = _stage(root, [], "ingest", 6)
        hashes = _stage(root, [ingest], "hashes", 6)
        keepers = _stage(root, [hashes], "keepers", 2)
        dedup = _stage(root, [hashes, keepers], "dedup", 6)
        kept = _stage(root, [dedup], "kept", 4)
    orphan = _stage(root, [], "ingest", 3, dataset="orphan")
    return {"root": root, "old": old, "ingest": ingest, "dedup": dedup, "kept": kept, "orphan": orphan,
            "recipe": recipe}  # fmt: skip


def test_lineage_shows_each_version_once_and_dataset_stage_means_latest(store):
    out = _cli("datasets", "--root", store["root"], "--lineage", "toy/kept")
    assert out.exit_code == 0, out.output
    assert "5 rows" in out.output  # kept, dedup, hashes, keepers, ingest: hashes reached twice, listed once
    assert out.output.count(str(store["ingest"])) == 2  # its own row, and as the parents of hashes
    full = _cli("datasets", "--root", store["root"], "--lineage", str(store["kept"]))
    assert full.exit_code == 0 and full.output == out.output


@pytest.mark.parametrize("ref", ["toy/nope", "toy/kept/ffffffffffff", "toy", "nope/kept"])
def test_lineage_of_an_unknown_ref_is_an_error(store, ref):
    out = _cli("datasets", "--root", store["root"], "--lineage", ref)
    assert out.exit_code == 2
    assert "Traceback" not in out.output and len(out.output.strip().splitlines()) <= 3


def test_views_lists_every_view_with_its_columns_and_version(store):
    out = _cli("views", "--root", store["root"], "toy__")
    assert out.exit_code == 0, out.output
    for stage in ("ingest", "hashes", "keepers", "dedup", "kept"):
        assert f"toy__{stage}" in out.output
    assert str(store["kept"]) in out.output and "doc_id VARCHAR" in out.output
    assert "orphan__ingest" not in out.output  # the pattern filters


def test_sql_reads_the_query_from_stdin_and_pins_a_version(store):
    query = f'select (select count(*) from "toy__ingest@{store["old"].version}") old, count(*) latest from toy__ingest'
    out = _cli("sql", "--root", store["root"], "-", "-f", "json", input=query)
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == {"old": 2, "latest": 6}


def test_a_sql_error_is_one_message_not_a_dump_of_every_view(store):
    syntax = _cli("sql", "--root", store["root"], "selec 1")
    assert syntax.exit_code == 1 and "syntax error" in syntax.output
    assert "toy__kept" not in syntax.output and "views:" not in syntax.output
    unknown = _cli("sql", "--root", store["root"], "select * from toy__nope")
    assert unknown.exit_code == 1 and "quarry views" in unknown.output
    assert "orphan__ingest" not in unknown.output


def test_export_writes_a_view_as_one_parquet_or_jsonl_file(store, tmp_path):
    import pyarrow.parquet as pq

    out = _cli("export", "--root", store["root"], "toy__kept", tmp_path / "kept.parquet")
    assert out.exit_code == 0, out.output
    assert "wrote 4 rows" in out.output
    assert pq.read_table(tmp_path / "kept.parquet").to_pylist() == [{"doc_id": f"d{i}"} for i in range(4)]
    pinned = f"toy__ingest@{store['old'].version[:6]}"  # a pinned version by unique prefix, JSONL by --format
    out = _cli("export", "--root", store["root"], pinned, tmp_path / "old.txt", "--format", "jsonl")
    assert out.exit_code == 0, out.output
    lines = (tmp_path / "old.txt").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"doc_id": "d0"}, {"doc_id": "d1"}]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the temporary was renamed away


@pytest.mark.parametrize(
    ("view", "name", "extra", "message"),
    [
        ("toy__nope", "x.parquet", [], "no view 'toy__nope'"),
        ("toy__ingest@ffffffffffff", "x.parquet", [], "no version of toy/ingest"),
        ("toy__kept", "x.csv", [], "cannot tell the format"),
        ("toy__kept", "x.parquet", ["--format", "xml"], "--format 'xml'"),
        ("toy__kept", "exists.parquet", [], "already exists"),
    ],
)
def test_export_refuses_an_unknown_view_a_bad_format_or_an_existing_file(store, tmp_path, view, name, extra, message):
    (tmp_path / "exists.parquet").write_bytes(b"keep me")
    out = _cli("export", "--root", store["root"], view, tmp_path / name, *extra)
    assert out.exit_code == 1 and message in out.output, out.output
    assert "Traceback" not in out.output
    assert (tmp_path / "exists.parquet").read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.parquet", "recipes", "store"]


def test_gc_keeps_versions_of_a_recipe_recorded_in_manifests_and_says_why_and_how_big(store):
    dry = _cli("gc", "--root", store["root"], "--dry-run")
    assert dry.exit_code == 0 and "dry run: would delete these 2 versions" in dry.output
    assert datasets.is_committed(store["old"]) and datasets.is_committed(store["orphan"])
    out = _cli("gc", "--root", store["root"], input="n\n")
    assert out.exit_code == 0 and out.output.endswith("nothing deleted\n")  # answered no: not an error
    assert datasets.is_committed(store["old"])
    doomed = {line.split()[1] for line in out.output.splitlines() if line.startswith("│ ") and "/" in line}
    assert doomed == {str(store["old"]), str(store["orphan"])}, out.output
    assert "superseded by toy/ingest/" in out.output and "no recipe writes orphan" in out.output
    assert " B " in out.output or "KB" in out.output  # a size per version
    plan = {r["ref"]: r for r in quarry_cli.gc_plan(store["root"])}
    assert plan[str(store["kept"])]["keep"] and str(store["recipe"]) in plan[str(store["kept"])]["reason"]
    assert plan[str(store["old"])]["bytes"] > 0
    out = _cli("gc", "--root", store["root"], "--yes")
    assert out.exit_code == 0 and "deleted 2 versions" in out.output
    assert not datasets.is_committed(store["old"]) and datasets.is_committed(store["ingest"])


def test_gc_drops_a_dataset_whose_recorded_recipe_is_gone(store):
    store["recipe"].unlink()
    plan = {r["ref"]: r for r in quarry_cli.gc_plan(store["root"])}
    assert not plan[str(store["kept"])]["keep"]
    assert "no longer exists" in plan[str(store["kept"])]["reason"]


@pytest.mark.parametrize(
    ("root", "recipe_root", "message"),
    [
        (None, None, "no storage root"),
        ("memory://q", None, "memory"),
        ("data", None, "relative"),
        (None, "/srv/local/store", "pass --root /srv/local/store"),
        ("/mnt/a", "/mnt/b", "would win over --root"),
    ],
)
def test_ray_submit_refuses_a_root_the_cluster_cannot_share(tmp_path, root, recipe_root, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"dataset": "toy", **({"storage_root": recipe_root} if recipe_root else {})}))
    args = ["ray", "submit", "ingest", recipe, "--address", "http://127.0.0.1:1"] + (["--root", root] if root else [])
    out = _cli(*args)
    assert out.exit_code == 2 and message in out.output and "Traceback" not in out.output


def test_ray_submit_to_a_wrong_address_says_so_in_one_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"dataset": "toy"}))
    out = _cli("ray", "submit", "ingest", recipe, "--root", "s3://bucket/q", "--address", "http://127.0.0.1:1")
    assert out.exit_code == 2
    lines = [line for line in out.output.splitlines() if "cannot reach" in line or "error" in line.lower()]
    assert "cannot reach the Ray job server at http://127.0.0.1:1" in out.output.replace("\n", " ")
    assert len(out.output.strip().splitlines()) <= 4 and lines  # Rich may wrap the one message


def test_ray_submit_defaults_to_the_cluster_profile():
    from services import ray_jobs as jobs

    assert jobs.DEFAULT_PROFILE == "cluster"
    out = _cli("ray", "submit", "--help")
    assert "[default: cluster]" in out.output


@pytest.mark.timeout(180)
def test_sigterm_to_quarry_dashboard_also_stops_its_streamlit_child(tmp_path):
    from tests.dashboards.test_dashboards import _free_port

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "quarry_cli.py"), "dashboard", "--port", str(port), "--root", str(tmp_path)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    health = f"http://127.0.0.1:{port}/_stcore/health"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(health, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "dashboard did not start"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)  # the CLI process only, as a service manager would
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(health, timeout=1)
            except OSError:
                break  # nothing serves the port any more
            time.sleep(0.5)
        else:
            pytest.fail("streamlit still serves after quarry dashboard got SIGTERM")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the child, should the test fail
        except ProcessLookupError:
            pass
