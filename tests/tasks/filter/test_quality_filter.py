import json
import re
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from tasks.filter.quality_filter import (
    QualityFilterParams,
    funnel_artifact,
    funnel_summary,
    line_filter,
    load_rule_set,
    quality_filter_sql,
    resolve_rules,
)

GOLD = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "gold"
# the layout tasks.signals.quality_signals emits for rps_lines_*
LINE_TYPE = pa.list_(pa.struct([("start", pa.int64()), ("end", pa.int64()), ("score", pa.float64())]))


def _spans(rows):
    return [None if r is None else [{"start": a, "end": b, "score": c} for a, b, c in r] for r in rows]


def _run(sql: str, batch: pa.Table) -> pa.Table:
    con = duckdb.connect()
    con.register("batch", batch)
    return con.sql(sql).to_arrow_table()


def _gold_table(name: str = "c4") -> pa.Table:
    """Gold RPv2 signals joined to their docs, in the column layout quality_signals emits (lines: list<list<f64>>)."""
    with open(GOLD / f"{name}_docs.jsonl") as f:
        docs = {d["id"]: d for d in map(json.loads, f)}
    with open(GOLD / f"{name}_rpv2_signals.jsonl") as f:
        sigs = [json.loads(line) for line in f]
    cols: dict[str, pa.Array] = {
        "doc_id": pa.array([s["id"] for s in sigs]),
        "text": pa.array([docs[s["id"]]["text"] for s in sigs]),
        # RPv2 ccnet_nlines = len(raw_content.split("\n")) (spec §2.1); not part of the gold records
        "ccnet_nlines": pa.array([float(len(docs[s["id"]]["text"].split("\n"))) for s in sigs]),
    }
    for key in sigs[0]:
        if key.startswith("rps_lines_"):
            cols[key] = pa.array(_spans([s[key] for s in sigs]), LINE_TYPE)
        elif key.startswith("rps_doc_"):
            cols[key] = pa.array([s[key] for s in sigs], pa.float64())
    return pa.table(cols)


needs_gold = pytest.mark.skipif(not GOLD.exists(), reason="shared gold data (../shared/data/gold) is absent")


def _card_gopher_rules_pass(sig: dict, nlines: float) -> bool:
    """The RPv2 HF dataset card's `gopher_rules_pass`, as written there (rules 1-5), on a gold record."""
    wc = sig["rps_doc_word_count"]
    if wc < 50 or wc > 10_000:
        return False
    mwl = sig["rps_doc_mean_word_length"]
    if mwl < 3 or mwl > 10:
        return False
    if sig["rps_doc_symbol_to_word_ratio"] > 0.1:
        return False
    n_bullets = sum(span[2] for span in sig["rps_lines_start_with_bulletpoint"])
    if n_bullets / nlines > 0.9:
        return False
    return not sig["rps_doc_frac_chars_top_2gram"] > 0.2


@needs_gold
def test_rpv2_rule_set_equals_the_dataset_card_code_on_all_gold_docs():
    table = _gold_table()
    out = _run(quality_filter_sql(QualityFilterParams(rules="rpv2")), table)
    with open(GOLD / "c4_rpv2_signals.jsonl") as f:
        sigs = [json.loads(line) for line in f]
    want = [_card_gopher_rules_pass(s, n) for s, n in zip(sigs, table.column("ccnet_nlines").to_pylist(), strict=True)]
    assert out.column("keep").to_pylist() == want
    assert out.num_rows == 1000 and 0 < sum(want) < 1000


@needs_gold
@pytest.mark.parametrize("rule_set", ["gopher", "rpv2", "c4"])
def test_drop_reason_is_the_first_failing_rule_and_no_doc_is_deleted(rule_set):
    table = _gold_table()
    rules = resolve_rules(rule_set)
    out = _run(quality_filter_sql(QualityFilterParams(rules=rule_set)), table)
    assert out.num_rows == table.num_rows
    assert out.column("doc_id").to_pylist() == table.column("doc_id").to_pylist()
    con = duckdb.connect()
    con.register("batch", table)
    passes = {
        name: [bool(v) for (v,) in con.execute(f"SELECT coalesce(({pred}), false) FROM batch").fetchall()]
        for name, pred in rules
    }
    for i, (keep, reason) in enumerate(
        zip(out.column("keep").to_pylist(), out.column("drop_reason").to_pylist(), strict=True)
    ):
        first_fail = next((name for name, _ in rules if not passes[name][i]), None)
        assert reason == first_fail
        assert keep == (reason is None)
    assert len(set(out.column("drop_reason").to_pylist())) >= 3  # the funnel has several distinct reasons


def test_null_predicate_counts_as_failing_and_existing_keep_is_replaced():
    batch = pa.table({"x": [1.0, None, 10.0], "keep": [False, True, True], "drop_reason": ["old", None, None]})
    out = _run(quality_filter_sql(QualityFilterParams(rules=(("x_small", "x < 5"),))), batch)
    assert out.column("keep").to_pylist() == [True, False, False]
    assert out.column("drop_reason").to_pylist() == [None, "x_small", "x_small"]
    assert out.column("drop_stage").to_pylist() == [None, "quality_filter", "quality_filter"]
    assert out.column_names == ["x", "drop_reason", "drop_stage", "keep"]


def test_drop_stage_is_the_filter_unless_a_rule_passes_an_earlier_stage_drop_through():
    """quality_filter re-decides the verdict; a rule that gives a row's earlier reason again (tiny_subdoc's
    `ld_empty_after_dedup` rule) keeps the stage that dropped it, every other failing rule is quality_filter's."""
    rules = (("ld_empty_after_dedup", "coalesce(drop_reason, '') <> 'ld_empty_after_dedup'"), ("x_small", "x < 5"))
    batch = pa.table({
        "x": [1.0, 10.0, 1.0, 10.0, 1.0],
        "keep": [False, False, False, True, False],
        "drop_reason": ["ld_empty_after_dedup", "x_small", "old", None, "ld_empty_after_dedup"],
        "drop_stage": ["line_dedup", "pii", "pii", None, None],  # the last: a verdict from before drop_stage
    })  # fmt: skip
    out = _run(quality_filter_sql(QualityFilterParams(rules=rules)), batch)
    assert out.column("drop_reason").to_pylist() == ["ld_empty_after_dedup", "x_small", None, "x_small",
                                                     "ld_empty_after_dedup"]  # fmt: skip
    # x_small again on row 1 is the same reason as before: the earlier stage keeps it (it dropped the row first)
    assert out.column("drop_stage").to_pylist() == ["line_dedup", "pii", None, "quality_filter", "quality_filter"]
    assert out.column("keep").to_pylist() == [False, False, True, False, False]
    # without any verdict before (the first filter), the same SELECT binds and decides alone
    out = _run(quality_filter_sql(QualityFilterParams(rules=(("x_small", "x < 5"),))), pa.table({"x": [1.0, 9.0]}))
    assert out.to_pylist() == [{"x": 1.0, "drop_reason": None, "drop_stage": None, "keep": True},
                               {"x": 9.0, "drop_reason": "x_small", "drop_stage": "quality_filter", "keep": False}]


def test_funnel_summary_counts_documents_per_drop_stage_and_reason():
    table = pa.table({
        "drop_stage": [None, "quality_filter", "quality_filter", "exact_dedup", None, "line_dedup"],
        "drop_reason": [None, "gopher_word_count", "gopher_word_count", "ed_text_duplicate", None,
                        "ld_empty_after_dedup"],
    })  # fmt: skip
    asked = []

    def read(columns):
        asked.append(columns)
        return table

    rows = funnel_summary(read, 0.0, None)["funnel"]
    assert asked == [["drop_stage", "drop_reason"]]
    assert rows == [
        {"drop_stage": None, "drop_reason": "(kept)", "documents": 2, "percent": 33.33},
        {"drop_stage": "quality_filter", "drop_reason": "gopher_word_count", "documents": 2, "percent": 33.33},
        {"drop_stage": "exact_dedup", "drop_reason": "ed_text_duplicate", "documents": 1, "percent": 16.67},
        {"drop_stage": "line_dedup", "drop_reason": "ld_empty_after_dedup", "documents": 1, "percent": 16.67},
    ]
    manifest = {"dataset": "d", "stage": "pii", "version": "v1", "stats": {"funnel": rows}}
    [(name, shown, title)] = funnel_artifact(manifest)
    assert name == "filter-funnel" and shown == rows and "drop_stage" in title
    assert funnel_summary(lambda columns: pa.table({"x": [1]}), 0.0, None) == {}  # no verdict: no funnel


def test_mixed_rule_list_of_sets_pairs_and_bare_predicates():
    rules = resolve_rules(("rpv2", ("my_len", "length(text) > 3"), "rps_doc_lorem_ipsum = 0"))
    names = [n for n, _ in rules]
    assert names[:5] == [r["name"] for r in load_rule_set("rpv2")["rules"]]
    assert names[5:] == ["my_len", "rule_2"]
    assert resolve_rules("x > 1") == [("rule_0", "x > 1")]


def test_bad_rules_are_clear_errors():
    with pytest.raises(ValueError, match="duplicate"):
        resolve_rules((("a", "x > 1"), ("a", "x > 2")))
    with pytest.raises(ValueError, match="identifiers"):
        resolve_rules((("a b", "x > 1"),))
    with pytest.raises(ValueError, match="unknown rule set"):
        load_rule_set("no_such_set")


def test_fineweb_rule_set_reads_datatrove_reason_columns():
    batch = pa.table(
        {
            "dt_gopher_repetition_reason": [None, None, "top_2_gram"],
            "dt_gopher_quality_reason": [None, "gopher_short_doc", None],
            "dt_c4_quality_reason": [None, None, None],
            "dt_fineweb_quality_reason": [None, None, "line_punct_ratio"],
        }
    )
    out = _run(quality_filter_sql(QualityFilterParams(rules="fineweb")), batch)
    assert out.column("drop_reason").to_pylist() == [None, "fineweb_gopher_quality", "fineweb_gopher_repetition"]


_LINE = re.compile(r"([^\n]*\n|[^\n]+$)")  # RPv2 split_paragraphs (spec §1)


@needs_gold
def test_c4_line_filter_keeps_exactly_the_passing_raw_lines_on_gold():
    table = _gold_table()
    out = line_filter(table, QualityFilterParams(rules="c4", line_rules="c4"))
    assert out.column("qf_original_length").to_pylist() == [len(t) for t in table.column("text").to_pylist()]
    assert out.column("qf_line_filter_error").null_count == out.num_rows
    rows = table.to_pylist()
    for row, new_text, kept in zip(
        rows, out.column("text").to_pylist(), out.column("qf_lines_kept").to_pylist(), strict=True
    ):
        lines = _LINE.findall(row["text"])
        want = [
            line
            for line, p, w, j in zip(
                lines,
                row["rps_lines_ending_with_terminal_punctution_mark"],
                row["rps_lines_num_words"],
                row["rps_lines_javascript_counts"],
                strict=True,
            )
            if p["score"] == 1 and w["score"] >= 3 and j["score"] == 0
        ]
        assert new_text == "".join(want)
        assert kept == len(want)
    shrunk = sum(
        len(a) < len(b) for a, b in zip(out.column("text").to_pylist(), table.column("text").to_pylist(), strict=True)
    )
    assert shrunk > 20  # the sample is C4 output already, yet RPv2 signals differ (e.g. ASCII `"` is no terminal mark)


def test_line_filter_with_misaligned_spans_keeps_text_and_says_why():
    batch = pa.table(
        {
            "text": ["Good line here.\nbad\n", "abc"],
            "rps_lines_ending_with_terminal_punctution_mark": pa.array(
                _spans([[[0, 16, 1], [16, 20, 0]], [[0, 9, 1]]]), LINE_TYPE
            ),
            "rps_lines_num_words": pa.array(_spans([[[0, 16, 3], [16, 20, 1]], [[0, 9, 3]]]), LINE_TYPE),
            "rps_lines_javascript_counts": pa.array(_spans([[[0, 16, 0], [16, 20, 0]], None]), LINE_TYPE),
        }
    )
    out = line_filter(batch, QualityFilterParams(line_rules="c4")).to_pylist()
    assert out[0]["text"] == "Good line here.\n" and out[0]["qf_lines_kept"] == 1
    assert out[1]["text"] == "abc" and "null" in out[1]["qf_line_filter_error"]
    assert out[1]["qf_original_length"] == 3


def test_line_filter_without_signals_is_a_clear_error():
    with pytest.raises(ValueError, match="rps_lines_num_words"):
        line_filter(pa.table({"text": ["a"]}), QualityFilterParams(line_rules="c4"))
