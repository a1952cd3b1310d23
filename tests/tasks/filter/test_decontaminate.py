"""Decontamination on real data: real ARC items planted inside real C4 documents are found, and only they."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pytest

import datasets_cfg
from ray_cluster import runtime
from storage import datasets
from tasks.filter import decontaminate as dc
from tasks.ingest.sources import IngestSource
from tests import stages
from tests.conftest import shared_path

SERIAL = runtime.Profile(name="serial", engine="serial")
PLANTED = (3, 17, 42)  # C4 documents (line numbers) that get one ARC-Easy item each


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """120 real C4 documents; three of them carry a real ARC-Easy question and its gold answer mid-text."""
    eval_dir = shared_path("eval")
    c4 = shared_path("web", "c4_sample", "c4_sample.jsonl").read_text().splitlines()[:120]
    arc = [json.loads(line) for line in (eval_dir / "gauntlet" / "arc_easy.jsonl").read_text().splitlines()]
    items = {}
    docs = [json.loads(line) for line in c4]
    for k, (line, item) in enumerate(zip(PLANTED, (arc[5], arc[100], arc[1000]), strict=True)):
        text = docs[line]["text"]
        qa = f"{item['query'].removeprefix('Question: ')} {item['choices'][item['gold']]}"
        cut = text.find(". ", len(text) // 2) + 2 or len(text)
        docs[line]["text"] = f"{text[:cut]}{qa} {text[cut:]}"
        items[line] = (5, 100, 1000)[k]
    folder = tmp_path_factory.mktemp("decontam")
    path = folder / "c4_planted.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    root = folder / "store"
    ref = stages.ingest([IngestSource(path=str(path), domain="web")], root=str(root), dataset="dc", docs_per_shard=50,
                        profile=SERIAL)
    cache = folder / "cache"
    return {"ref": ref, "eval_dir": str(eval_dir), "cache": str(cache), "docs": docs, "items": items}


def _params(planted, **kw) -> dc.DecontaminateParams:
    return dc.DecontaminateParams(eval_dir=planted["eval_dir"], cache_dir=planted["cache"], **kw)


def test_the_stage_finds_exactly_the_planted_arc_items(planted):
    out = datasets.read_table(stages.run("decontaminate", [planted["ref"]], _params(planted), SERIAL))
    rows = out.to_pylist()
    assert len(rows) == 120  # no row removed: the verdict is keep/drop_reason
    texts = [d["text"] for d in planted["docs"]]
    hit = {texts.index(r["text"]) for r in rows if r["dc_ngrams"] > 0}
    assert hit == set(PLANTED)
    for r in rows:
        line = texts.index(r["text"])
        if line in PLANTED:
            assert r["drop_reason"] == "decontam_arc_easy" and r["keep"] is False and r["dc_tasks"] == ["arc_easy"]
            assert r["drop_stage"] == "decontaminate"
            assert r["dc_ngrams"] >= 3 and len(r["dc_matched"]) == r["dc_ngrams"]
        else:
            assert r["keep"] is True and r["drop_reason"] is None and r["drop_stage"] is None and r["dc_tasks"] == []


def test_n_and_threshold_are_the_recipes(planted):
    """13-grams find the planted items; 60-grams are longer than any of them (question + answer < 60 words)."""
    out = datasets.read_table(stages.run("decontaminate", [planted["ref"]], _params(planted, n=60), SERIAL))
    assert sum(out.column("dc_ngrams").to_pylist()) == 0
    loose = datasets.read_table(stages.run("decontaminate", [planted["ref"]], _params(planted, threshold=1000), SERIAL))
    assert sum(1 for n in loose.column("dc_ngrams").to_pylist() if n) == 3  # still counted ...
    assert set(loose.column("keep").to_pylist()) == {True}  # ... but under the threshold: kept


def test_items_are_counted_per_task_and_only_the_planted_ones(planted):
    table = dc.contaminated_items([d["text"] for d in planted["docs"]], _params(planted))
    rows = {r["task"]: r for r in table.to_pylist()}
    assert set(rows) == set(dc.ALL_TASKS)
    assert rows["arc_easy"]["contaminated"] == 3 and rows["arc_easy"]["items"] == 2376
    assert all(r["contaminated"] == 0 for t, r in rows.items() if t != "arc_easy")
    clean = dc.contaminated_items([d["text"] for i, d in enumerate(planted["docs"]) if i not in PLANTED],
                                  _params(planted))
    assert sum(clean.column("contaminated").to_pylist()) == 0


def test_eval_contamination_stage_reports_per_task_for_the_models_training_docs(planted):
    docs = planted["ref"]
    train = datasets.derive([docs], "train", None, {"test": "model"})
    datasets.write_table(train, pa.table({"step": [1], "loss": [1.0]}), parents=[docs])
    ref = stages.run("eval_contamination", [train, docs], _params(planted, tasks=("arc_easy", "copa")), SERIAL)
    rows = {r["task"]: r for r in datasets.read_table(ref).to_pylist()}
    assert rows["arc_easy"]["contaminated"] == 3 and rows["copa"]["contaminated"] == 0
    assert rows["arc_easy"]["model_version"] == str(train) and rows["arc_easy"]["data_version"] == str(docs)
    assert datasets.read_manifest(ref)["stats"]["contamination"][0]["task"] == "arc_easy"


def test_the_index_is_built_once_per_eval_set_version(planted, tmp_path):
    """A cache file per eval-file sha1; a changed eval file is a new fingerprint (so a new stage version)."""
    eval_copy = tmp_path / "eval"
    (eval_copy / "gauntlet").mkdir(parents=True)
    shutil.copy(shared_path("eval", "gauntlet", "copa.jsonl"), eval_copy / "gauntlet" / "copa.jsonl")
    p = dc.DecontaminateParams(eval_dir=str(eval_copy), tasks=("copa",), cache_dir=str(tmp_path / "c"), n=8)
    idx = dc.eval_index(p)
    files = list((tmp_path / "c" / "decontaminate").glob("*.npz"))
    assert len(files) == 1 and idx.stats["items"] == {"copa": 100} and len(idx.hashes) > 100
    mtime = files[0].stat().st_mtime_ns
    dc._cached_index.cache_clear()
    again = dc.eval_index(p)  # from the file, not rebuilt
    assert files[0].stat().st_mtime_ns == mtime and (again.hashes == idx.hashes).all()
    with open(eval_copy / "gauntlet" / "copa.jsonl", "a") as f:
        f.write(json.dumps({"query": "The new item was added to the set, therefore", "gold": 0,
                            "choices": ["the fingerprint of the files changed.", "nothing happened."]}) + "\n")
    p2 = dc.DecontaminateParams(eval_dir=str(eval_copy), tasks=("copa",), cache_dir=str(tmp_path / "c"), n=8)
    assert p2.eval_fingerprint != p.eval_fingerprint
    assert datasets.derive([planted["ref"]], "decontaminate", None, p2) != datasets.derive(
        [planted["ref"]], "decontaminate", None, p)
    assert dc.eval_index(p2).stats["items"] == {"copa": 101}
    assert len(list((tmp_path / "c" / "decontaminate").glob("*.npz"))) == 2


def test_a_missing_eval_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match="eval_dir: .*arc_easy.*arc_easy.jsonl"):
        dc.DecontaminateParams(eval_dir=str(tmp_path), tasks=("arc_easy",))
    recipe = {"dataset": "r", "ingest": {"sources": [{"path": "x.jsonl"}]}, "decontaminate": {"eval_dir": "nowhere"}}
    with pytest.raises(datasets_cfg.RecipeError, match=r"(?s)r\.yaml.*decontaminate: eval_dir: eval file for 'arc_easy' missing: .*nowhere"):
        datasets_cfg.validate(recipe, tmp_path / "r.yaml")


def test_the_recipe_section_takes_evaluate_files_and_tasks(tmp_path):
    eval_dir = shared_path("eval")
    recipe = {
        "dataset": "r", "ingest": {"sources": [{"path": "x.jsonl"}]},
        "decontaminate": {"n": 13},
        "evaluate": {"eval_dir": str(eval_dir), "tasks": ["arc_easy", "piqa"]},
    }  # fmt: skip
    cfg = datasets_cfg.validate(recipe, tmp_path / "r.yaml")
    assert cfg.decontaminate.eval_dir == str(eval_dir) and cfg.decontaminate.tasks == ("arc_easy", "piqa")
    assert cfg.decontaminate.eval_fingerprint == dc.fingerprint(eval_dir, ("arc_easy", "piqa"))
    with pytest.raises(datasets_cfg.RecipeError, match="decontaminate.eval_dir"):
        datasets_cfg.validate({"dataset": "r", "ingest": {"sources": [{"path": "x.jsonl"}]}, "decontaminate": {}},
                              tmp_path / "r.yaml")
    with pytest.raises(datasets_cfg.RecipeError, match="threshold"):
        datasets_cfg.validate({**recipe, "decontaminate": {"threshold": 0}}, tmp_path / "r.yaml")
