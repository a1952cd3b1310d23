"""Issue 34: views follow explicit pointers, gc honours pointers and the leases of live runs, abandoned uncommitted
versions are collected, and a second recipe cannot silently write another recipe's dataset.

Every run is the real curate/ingest flow (Prefect test API, serial profile) on 40 C4 documents; gc is the CLI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import quarry_cli
from storage import catalog, datasets, leases, pointers
from tests.conftest import REPO
from tests.reliability import _harness as h

DATASET = "rel"


def _gc(root: str, *args: str):
    out = CliRunner().invoke(quarry_cli.app, ["gc", "--root", root, *args], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    return out.output


@pytest.fixture()
def recipes(tmp_path):
    """a.yaml and b.yaml (other rules, says it is a.yaml's dataset) and c.yaml (other rules, says nothing)."""
    (tmp_path / "inputs").mkdir()
    with h.C4.open(encoding="utf-8") as f:
        rows = [json.loads(next(f)) for _ in range(40)]
    docs = [tmp_path / "inputs" / f"part{i}.jsonl" for i in range(4)]  # one ingest shard per file
    for i, path in enumerate(docs):
        path.write_text("".join(json.dumps({"text": r["text"], "url": r["url"]}) + "\n" for r in rows[i::4]))
    root = tmp_path / "store"

    def recipe(name: str, min_len: int, **extra) -> Path:
        sources = [{"path": str(p), "domain": "web", "lang": "en"} for p in docs]
        data = {"dataset": DATASET, "cluster": "serial", "storage_root": str(root),
                "ingest": {"docs_per_shard": 10, "sources": sources},
                "quality_filter": {"rules": [f"length(text) > {min_len}"]}, **extra}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data))
        return path

    out = {"root": str(root), "a": recipe("a.yaml", 400), "b": recipe("b.yaml", 1500, same_dataset_as="a.yaml"),
           "c": recipe("c.yaml", 1000), "docs": docs}
    out["kept_a"] = sum(len(r["text"]) > 400 for r in rows)
    out["kept_b"] = sum(len(r["text"]) > 1500 for r in rows)
    assert out["kept_a"] != out["kept_b"]
    return out


def _view_rows(root: str, view: str) -> int:
    return catalog.connect(root).execute(f"select count(*) from {view}").fetchone()[0]


def test_a_then_b_then_a_shows_a_and_gc_keeps_a(recipes, prefect_api):
    from flows.curate import curate

    root = recipes["root"]
    first_a = curate(str(recipes["a"]))
    b = curate(str(recipes["b"]))
    assert b != first_a and _view_rows(root, f"{DATASET}__kept") == recipes["kept_b"]
    again = curate(str(recipes["a"]))  # every version reused: nothing committed, yet the views move back to A
    assert again == first_a
    assert _view_rows(root, f"{DATASET}__kept") == recipes["kept_a"]
    assert str(datasets.latest(root, DATASET, "kept")) == first_a
    con = catalog.connect(root)
    moves = con.execute(f"select reason, recipe, version from pointer_history where dataset = '{DATASET}' "
                        "and stage = 'kept' order by moved_at").fetchall()
    a_kept = first_a.split("/")[-1]
    assert [(r, v == a_kept) for r, _, v in moves] == [("commit", True), ("commit", False), ("reuse", True)]
    assert moves[2][1] == str(recipes["a"].resolve())  # the run that moved it, with its recipe
    assert con.execute(f"select reason from pointers where dataset = '{DATASET}' and stage = 'kept'").fetchone() == (
        "reuse",)
    b_filter = con.execute(f"select version from pointer_history where dataset = '{DATASET}' and stage = "
                           "'quality_filter' and recipe like '%b.yaml'").fetchone()[0]

    out = _gc(root, "--yes")
    assert "deleted" in out
    assert datasets.is_committed(datasets.ref_from_string(root, first_a))  # A's current versions stay ...
    assert not datasets.is_committed(datasets.ref_from_string(root, b))  # ... B's superseded ones go
    assert not datasets.is_committed(datasets.DatasetRef(root, DATASET, "quality_filter", b_filter))
    assert _view_rows(root, f"{DATASET}__kept") == recipes["kept_a"]
    assert "nothing to delete" in _gc(root, "--yes")


def test_a_second_recipe_writing_the_dataset_is_refused(recipes, prefect_api):
    from flows.curate import curate

    curate(str(recipes["a"]))
    before = sorted(m["version"] for m in datasets.iter_manifests(recipes["root"]))
    with pytest.raises(pointers.OwnershipError) as err:
        curate(str(recipes["c"]))
    msg = str(err.value)
    assert "a.yaml" in msg and "c.yaml" in msg and "same_dataset_as" in msg
    assert sorted(m["version"] for m in datasets.iter_manifests(recipes["root"])) == before  # nothing written
    assert _view_rows(recipes["root"], f"{DATASET}__kept") == recipes["kept_a"]


KILLED_RUN = r"""
import os, signal, sys
import datasets_cfg
from ray_cluster import runtime
from storage import datasets, leases
from tests import stages
recipe = datasets_cfg.load(sys.argv[1])
with leases.holding(recipe.root, [recipe.dataset]):
    ing = datasets.latest(recipe.root, recipe.dataset, "ingest")
    try:  # shards 0 and 1 of 4 written, then the process dies without cleanup (its lease stays behind)
        stages.run("quality_filter", [ing], recipe.quality_filter, runtime.load_profile("serial"), fail_from_shard=2)
    except Exception as e:  # the injected failure (raised as is, or wrapped as the shards that failed)
        if "injected failure" in str(e):
            os.kill(os.getpid(), signal.SIGKILL)
        raise
"""


def test_a_killed_runs_uncommitted_version_is_collected_once_no_live_run_leases_it(recipes, prefect_api):
    from flows.curate import curate
    from flows.ingest import ingest

    root = recipes["root"]
    ingest(str(recipes["a"]))
    child = subprocess.run([sys.executable, "-c", KILLED_RUN, str(recipes["a"])], cwd=REPO,
                           env={**os.environ, "PYTHONPATH": str(REPO)}, check=False, capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    stuck = [p for p in Path(root, DATASET, "quality_filter").iterdir() if not (p / datasets.MANIFEST).exists()]
    assert len(stuck) == 1 and len(list(stuck[0].glob("part-*.parquet"))) == 2
    assert [e["live"] for e in leases.read_all(root)] == [False]  # its pid is gone on this host: dead

    assert "nothing to delete" in _gc(root, "--yes")  # written seconds ago: inside the default grace period
    with leases.holding(root, [DATASET]):  # a live run of the dataset: kept whatever its age
        assert "nothing to delete" in _gc(root, "--yes", "--grace-s", "0")
    out = _gc(root, "--yes", "--grace-s", "0")
    assert f"{DATASET}/quality_filter/{stuck[0].name}" in out and "uncommitted" in out
    assert not stuck[0].exists() and leases.read_all(root) == []  # the dead lease file is removed too
    curate(str(recipes["a"]))  # the next run computes that version afresh and commits it whole
    manifest = datasets.read_manifest(datasets.DatasetRef(root, DATASET, "quality_filter", stuck[0].name))
    assert manifest["num_rows"] == 40 and len(manifest["files"]) == 4


def test_an_old_root_without_pointers_falls_back_to_newest_once_then_gc_adopts_it(tmp_path):
    import pyarrow as pa

    root = str(tmp_path)
    old, new = (datasets.DatasetRef(root, "toy", "ingest", c * 12) for c in "01")
    datasets.write_table(new, pa.table({"x": [1, 2]}))
    time.sleep(0.01)
    datasets.write_table(old, pa.table({"x": [1]}))  # created last: the newest by created_at
    assert datasets.latest(root, "toy", "ingest") == old and pointers.history(root) == []
    assert [m["reason"] for m in pointers.adopt(root)] == ["adopt"]
    pointers.move(new, "commit")
    assert datasets.latest(root, "toy", "ingest") == new  # from here on the pointer decides, not created_at
    assert _view_rows(root, "toy__ingest") == 2


class _SlowLLM(h._LLMHandler):
    """The harness's deterministic teacher, slowed down so a run is still augmenting while gc runs."""

    seen_keys: list[str] = []

    def do_POST(self):
        time.sleep(0.5)
        super().do_POST()


def test_gc_beside_a_running_flow_keeps_what_it_reads_and_the_run_completes(recipes, prefect_api):
    import threading
    from http.server import ThreadingHTTPServer

    from prefect.settings import PREFECT_API_URL

    from flows.curate import curate

    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowLLM)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root, recipe = recipes["root"], recipes["a"]
    data = yaml.safe_load(recipe.read_text())
    data["augment"] = {"backend": "openai", "base_url": f"http://127.0.0.1:{server.server_address[1]}/v1",
                       "model": "smollm2", "api_key_env": h.API_KEY_ENV, "max_new_tokens": 8,
                       "max_input_tokens": 64, "concurrency": 2, "retries": 1, "backoff_s": 0.01}
    recipe.write_text(yaml.safe_dump(data))
    kept_a = curate(str(recipe))
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": PREFECT_API_URL.value(),
           h.API_KEY_ENV: "sk-reliability", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.Popen([sys.executable, "-m", "flows.augment", str(recipe)], cwd=REPO, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not _SlowLLM.seen_keys and run.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert _SlowLLM.seen_keys, "the run never reached augment"
        curate(str(recipes["b"]))  # another run moves the pointers to B: A's kept is now "superseded" ...
        assert str(datasets.latest(root, DATASET, "kept")) != kept_a
        plan = {r["ref"]: r for r in quarry_cli.gc_plan(root)}
        assert plan[kept_a]["keep"] and "leased by run" in plan[kept_a]["reason"], plan[kept_a]  # ... the run reads it
        _gc(root, "--yes", "--grace-s", "0")  # nor is its uncommitted augment version abandoned
        assert run.poll() is None, "the run ended before gc ran: slow the teacher down"
        out, _ = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
        server.shutdown()
    assert run.returncode == 0, out[-3000:]
    augmented = datasets.latest(root, DATASET, "augment")
    assert datasets.read_manifest(augmented)["num_rows"] == recipes["kept_a"]
    assert datasets.read_manifest(augmented)["parents"] == [kept_a]


def test_either_recipe_of_a_same_dataset_pair_may_run_first_and_a_third_is_refused(tmp_path):
    """tiny_experiment.yaml says `same_dataset_as: tiny.yaml`: whichever runs first owns the dataset, the other runs."""
    root = str(tmp_path)
    assert pointers.claim(root, "t", "exp.yaml", same_as="tiny.yaml")["recipe"] == "exp.yaml"
    assert pointers.claim(root, "t", "tiny.yaml")["recipe"] == "exp.yaml"
    assert pointers.claim(root, "t", "b.yaml", same_as="tiny.yaml")["recipe"] == "exp.yaml"
    with pytest.raises(pointers.OwnershipError, match="belongs to recipe exp.yaml"):
        pointers.claim(root, "t", "c.yaml")


def _move_many(args) -> int:
    root, version, n = args
    ref = datasets.DatasetRef(root, "toy", "ingest", version)
    for _ in range(n):
        pointers.move(ref, "reuse")
    return n


def test_concurrent_runs_moving_one_pointer_never_corrupt_it(tmp_path):
    """Four processes move one pointer 25 times each at once: 100 whole moves, no temporaries, one current version."""
    import multiprocessing

    import pyarrow as pa

    root = str(tmp_path)
    versions = [c * 12 for c in "0123"]
    for v in versions:
        datasets.write_table(datasets.DatasetRef(root, "toy", "ingest", v), pa.table({"x": [1]}))
    with multiprocessing.get_context("fork").Pool(4) as pool:
        assert sum(pool.map(_move_many, [(root, v, 25) for v in versions])) == 100
    moves = pointers.history(root, "toy", "ingest")
    assert len(moves) == 100 and {m["version"] for m in moves} == set(versions)
    assert len({m["pid"] for m in moves}) == 4
    assert not [p for p in (tmp_path / "_pointers").rglob("*") if p.name.startswith("_tmp.")]
    assert datasets.latest(root, "toy", "ingest").version == moves[-1]["version"]


def test_a_lease_is_renewed_while_its_run_lives_and_dead_once_expired_or_its_pid_is_gone(tmp_path):
    root = str(tmp_path)
    with leases.holding(root, ["toy"], renew_s=0.05) as lease:
        first = leases.read_all(root)[0]["renewed_at"]
        time.sleep(0.3)
        entry = leases.read_all(root)[0]
        assert entry["live"] and entry["renewed_at"] > first and entry["run_id"] == lease.run_id
    assert leases.read_all(root) == []  # released at the end of the run
    now = time.time()
    other_host = {"host": "ffffffff", "pid": 1, "expires_at": "2000-01-01T00:00:00+00:00"}
    assert not leases.is_live(other_host, now)  # another host's run: only its expiry tells, and it passed
    assert leases.is_live({**other_host, "expires_at": "2999-01-01T00:00:00+00:00"}, now)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    mine = {"host": leases.HOST_TAG, "pid": int(gone.stdout), "expires_at": "2999-01-01T00:00:00+00:00"}
    assert not leases.is_live(mine, now)  # this host, pid gone: dead at once whatever its expiry
