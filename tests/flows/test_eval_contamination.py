"""The evaluate flow's contamination table reads the documents the model was trained on (up its lineage) and the
evaluate section's tasks: checked on real committed versions, without training a model."""

from __future__ import annotations

import json

import pyarrow as pa

import datasets_cfg
from flows.evaluate import contamination_params, training_docs
from ray_cluster import runtime
from storage import datasets
from tasks.ingest.sources import IngestSource
from tests import stages
from tests.conftest import shared_path

SERIAL = runtime.Profile(name="serial", engine="serial")


def _child(parent: datasets.DatasetRef, stage: str, table: pa.Table) -> datasets.DatasetRef:
    ref = datasets.derive([parent], stage, None, {"rows": table.num_rows})
    datasets.write_table(ref, table, parents=[parent])
    return ref


def test_contamination_counts_the_items_inside_the_models_training_documents(tmp_path):
    lines = shared_path("web", "c4_sample", "c4_sample.jsonl").read_text().splitlines()[:40]
    copa = [json.loads(x) for x in shared_path("eval", "gauntlet", "copa.jsonl").read_text().splitlines()]
    piqa = [json.loads(x) for x in shared_path("eval", "gauntlet", "piqa.jsonl").read_text().splitlines()]
    docs = [json.loads(x) for x in lines]
    qa = [f"{p['query'].removeprefix('Question: ').strip()} {p['choices'][p['gold']]}" for p in piqa]
    docs[7]["text"] += " " + next(t for t in qa if len(t.split()) >= 25)  # a long item: well over 13 words
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    curated = stages.ingest([IngestSource(path=str(path), domain="web")], root=str(tmp_path / "s"), dataset="ev",
                            docs_per_shard=20, profile=SERIAL)
    tok = _child(curated, "tokenize", pa.table({"tok_ids": [[1, 2]]}))
    pack = _child(tok, "pack", pa.table({"x": [1]}))
    train = _child(pack, "train", pa.table({"step": [1], "loss": [2.0]}))
    assert training_docs(train) == curated

    recipe = {"dataset": "ev", "ingest": {"sources": [{"path": str(path)}]},
              "evaluate": {"eval_dir": str(shared_path("eval")), "tasks": ["piqa", "copa"]}}  # fmt: skip
    cfg = datasets_cfg.validate(recipe, tmp_path / "ev.yaml")
    params = contamination_params(cfg)
    assert params.tasks == ("piqa", "copa") and params.n == 13
    ref = stages.run("eval_contamination", [train, training_docs(train)], params, SERIAL)
    rows = {r["task"]: r for r in datasets.read_table(ref).to_pylist()}
    assert rows["piqa"]["contaminated"] == 1 and rows["piqa"]["items"] == len(piqa)
    assert rows["copa"]["contaminated"] == 0 and rows["copa"]["items"] == len(copa)
