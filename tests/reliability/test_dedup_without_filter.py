"""Dedup without a quality filter still removes duplicates from `kept` (it used to flag them in ed_keep/mh_keep
while `kept` read only `keep`, which only quality_filter created: every duplicate stayed, exit 0)."""

from __future__ import annotations

from collections import Counter

import pytest

import tasks.dedup.exact as ed
import tasks.dedup.minhash as mh
from storage import datasets
from tasks.select.selection import KeptParams
from tests import stages
from tests.reliability import _harness as h


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    if not h.C4.is_file():
        pytest.skip(f"shared data not found at {h.C4}")
    folder = tmp_path_factory.mktemp("inputs")
    h.make_inputs(folder)
    return folder


def test_exact_and_fuzzy_dedup_without_a_filter_leave_one_copy_in_kept(inputs, tmp_path):
    prof = h.serial()
    ing = stages.ingest(h.sources(inputs), root=str(tmp_path), dataset="nf", docs_per_shard=8, profile=prof)
    sig = stages.run("minhash_signatures", [ing], mh.MinhashSignaturesParams(), prof)
    exact = stages.section("exact_dedup", sig, ed.ExactDedupParams(), prof)
    fuzzy = stages.section("minhash_dedup", exact, mh.MinhashDedupParams(), prof)
    kept = stages.run("kept", [fuzzy], KeptParams(), prof)

    n = datasets.read_manifest(ing)["num_rows"]
    funnel = datasets.read_table(fuzzy, columns=["doc_id", "keep", "drop_reason"])
    reasons = Counter(funnel.column("drop_reason").to_pylist())
    # make_inputs plants 4 exact copies (same url and text) and 3 near copies (one word changed: Jaccard ~0.8 on
    # 13-gram shingles, where RPv2's 9x13 bands find a pair with probability ~0.7, so at least one is found)
    assert reasons["ed_url_duplicate"] + reasons["ed_text_duplicate"] == 4, reasons
    assert reasons["mh_duplicate"] >= 1, reasons
    kept_ids = datasets.read_table(kept, columns=["doc_id"]).column("doc_id").to_pylist()
    flagged = {d for d, k in zip(funnel.column("doc_id").to_pylist(), funnel.column("keep").to_pylist(), strict=True)
               if not k}
    assert len(flagged) == sum(v for k, v in reasons.items() if k) and not flagged & set(kept_ids)
    assert len(kept_ids) == n - len(flagged) == reasons[None]
    # nothing lost: every ingested document is either kept or has its reason
    assert len(kept_ids) + sum(v for k, v in reasons.items() if k) == n
    assert len(set(kept_ids)) == len(kept_ids)
