"""The one verdict: keep, drop_reason and drop_stage, folded so the first failing rule (and its stage) wins."""

import duckdb
import pyarrow as pa
import pytest

from tasks.common.verdict import VERDICT, ensure_keep_columns, fold_verdict, redecide_verdict_sql


def test_fold_verdict_records_who_dropped_each_row_and_never_replaces_an_earlier_drop():
    batch = pa.table({"x": [1, 2, 3, 4], "keep": [True, True, False, True],
                      "drop_reason": [None, None, "gopher_short", None],
                      "drop_stage": [None, None, "quality_filter", None]})  # fmt: skip
    out = fold_verdict(batch, [None, "pii_email", "pii_ip", None], stage="pii")
    assert out.column("keep").to_pylist() == [True, False, False, True]
    assert out.column("drop_reason").to_pylist() == [None, "pii_email", "gopher_short", None]
    assert out.column("drop_stage").to_pylist() == [None, "pii", "quality_filter", None]
    # a later stage folds over it: only rows still kept can be dropped, each with that stage
    again = fold_verdict(out, pa.array(["mh_duplicate", "mh_duplicate", None, None]), stage="minhash_dedup")
    assert again.column("drop_reason").to_pylist() == ["mh_duplicate", "pii_email", "gopher_short", None]
    assert again.column("drop_stage").to_pylist() == ["minhash_dedup", "pii", "quality_filter", None]
    assert again.column_names == ["x", *VERDICT]


def test_fold_verdict_creates_the_verdict_when_no_filter_ran_and_accepts_arrow_reasons():
    reasons = pa.chunked_array([[None], ["ed_text_duplicate"]], pa.string())
    out = fold_verdict(pa.table({"x": [1, 2]}), reasons, stage="exact_dedup")
    assert out.to_pylist() == [
        {"x": 1, "keep": True, "drop_reason": None, "drop_stage": None},
        {"x": 2, "keep": False, "drop_reason": "ed_text_duplicate", "drop_stage": "exact_dedup"},
    ]
    # a verdict written before drop_stage existed gets a null one: its stage is unknown, later drops are named
    old = pa.table({"keep": [False, True], "drop_reason": ["old", None]})
    assert ensure_keep_columns(old).column("drop_stage").to_pylist() == [None, None]
    assert fold_verdict(old, [None, "sn_too_short_after_dedup"], stage="sentence_dedup").column(
        "drop_stage").to_pylist() == [None, "sentence_dedup"]  # fmt: skip


def test_fold_verdict_refuses_a_nameless_stage_or_a_reason_per_row_too_few():
    with pytest.raises(ValueError, match="stage"):
        fold_verdict(pa.table({"x": [1]}), [None], stage="")
    with pytest.raises(ValueError, match="2 reasons for 1 rows"):
        fold_verdict(pa.table({"x": [1]}), [None, None], stage="pii")


def test_redecide_verdict_sql_replaces_the_verdict_and_keeps_an_earlier_stage_for_its_own_reason():
    sql = redecide_verdict_sql("batch", "CASE WHEN x > 2 THEN 'big' WHEN x = 2 THEN drop_reason END", stage="qf")
    con = duckdb.connect()
    con.register("batch", pa.table({"x": [1, 2, 3], "drop_reason": [None, "ld_empty", "ld_empty"],
                                    "drop_stage": [None, "line_dedup", "line_dedup"],
                                    "keep": [True, False, False]}))  # fmt: skip
    assert con.sql(sql).to_arrow_table().to_pylist() == [
        {"x": 1, "drop_reason": None, "drop_stage": None, "keep": True},
        {"x": 2, "drop_reason": "ld_empty", "drop_stage": "line_dedup", "keep": False},
        {"x": 3, "drop_reason": "big", "drop_stage": "qf", "keep": False},
    ]
    with pytest.raises(ValueError, match="stage"):
        redecide_verdict_sql("batch", "NULL", stage="")
