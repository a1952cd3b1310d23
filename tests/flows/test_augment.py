"""The augment flow with the real bundled teacher: provenance on every row, cost in the manifest, reuse on re-run."""

import pytest
import yaml

from storage import catalog, datasets
from tests.conftest import shared_path


def _recipe(tmp_path, limit):
    path = tmp_path / f"aug{limit}.yaml"
    # the recipes for 4 and 6 documents grow one dataset: they say so (a second recipe is refused otherwise)
    same = {} if limit == 4 else {"same_dataset_as": str(tmp_path / "aug4.yaml")}
    path.write_text(yaml.safe_dump({
        **same,
        "dataset": "augtest",
        "storage_root": str(tmp_path / "store"),
        "ingest": {"sources": [{"path": str(shared_path("domains", "arxiv_abstracts", "arxiv_abstracts.jsonl")),
                                "domain": "arxiv", "text_field": "abstract", "limit": limit}]},
        "augment": {"backend": "local", "max_input_tokens": 48, "max_new_tokens": 6, "batch_size": 8, "num_threads": 1},
    }))
    return path


@pytest.mark.slow
def test_augment_flow_records_provenance_and_reuses_earlier_generations(tmp_path, prefect_api, ray_local):
    from flows.augment import augment

    first = augment(str(_recipe(tmp_path, 4)))
    root = str(tmp_path / "store")
    ref = datasets.ref_from_string(root, first)
    rows = datasets.read_table(ref).to_pylist()
    assert len(rows) == 4
    for r in rows:
        assert r["aug_source_id"] == r["doc_id"] and r["aug_template_id"] == "tpt_paper_v1"
        assert "SmolLM2-135M" in r["aug_teacher"] and "sha256:" in r["aug_teacher"] and r["aug_finish_reason"] in ("stop", "length", "error")
        assert r["aug_prompt_tokens"] > 0 and r["aug_key"]
        assert (r["aug_text"] is None) == (r["aug_error"] is not None)
        if r["aug_text"]:
            assert r["aug_text"].startswith(r["text"][:20]) and "<think>" in r["aug_text"]
    cost = datasets.read_manifest(ref)["stats"]["cost"]
    assert cost["generated_tokens"] > 0 and cost["tokens_per_s"] > 0
    assert augment(str(_recipe(tmp_path, 4))) == first  # committed: a no-op

    # two more documents: a new version, but the first four are reused (same key, same latency), not regenerated
    second = datasets.read_table(datasets.ref_from_string(root, augment(str(_recipe(tmp_path, 6)))))
    assert second.num_rows == 6
    before = {r["aug_key"]: r["aug_latency_s"] for r in rows if r["aug_error"] is None}
    after = {r["aug_key"]: r["aug_latency_s"] for r in second.to_pylist()}
    assert all(after[k] == v for k, v in before.items())
    con = catalog.connect(root)
    assert con.execute("select count(*) from augtest__augment").fetchone()[0] == 6
