"""Comparisons with uncertainty on synthetic per-example rows whose truth is known."""

import numpy as np
import pyarrow as pa
import pytest

from tasks.evaluate.compare import CENTERED_TASK, EXAMPLE_SCHEMA, centered_rows, compare


def _rows(variant: str, seed: int, correct: np.ndarray, task: str = "copa", chance: float = 0.5) -> list[dict]:
    return [{"variant": variant, "model_size": "tiny", "tokens_per_param": None, "seed": seed, "task": task,
             "metric": "acc", "example": str(i), "value": float(c), "weight": 1.0, "chance": chance}
            for i, c in enumerate(correct)]  # fmt: skip


def _table(rows):
    schema = pa.schema([("variant", pa.string()), ("model_size", pa.string()), ("tokens_per_param", pa.float64()),
                        ("seed", pa.int64()), *EXAMPLE_SCHEMA])  # fmt: skip
    return pa.Table.from_pylist(rows, schema=schema)


def _by_variant(t):
    return {r["variant"]: r for r in t.to_pylist() if r["task"] == "copa"}


def test_a_clearly_better_variant_is_better_and_a_copy_is_within_noise():
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(3):
        rows += _rows("raw", seed, rng.random(400) < 0.5)
        rows += _rows("good", seed, rng.random(400) < 0.8)
        rows += _rows("same", seed, rng.random(400) < 0.5)
    out = _by_variant(compare(_table(rows), "raw", iters=500))
    assert out["raw"]["verdict"] == "baseline" and out["raw"]["delta"] is None
    good = out["good"]
    assert good["verdict"] == "better" and good["p_value"] < 0.01
    assert good["delta_ci_low"] < good["delta"] < good["delta_ci_high"] and good["delta"] == pytest.approx(0.3, abs=0.05)
    assert good["ci_low"] < good["mean"] < good["ci_high"] and good["mean"] == pytest.approx(0.8, abs=0.04)
    assert good["n_seeds"] == 3 and good["n_examples"] == 400
    assert out["same"]["verdict"] == "within noise" and out["same"]["p_value"] > 0.05


def test_worse_on_bits_per_byte_means_higher_and_weights_are_bytes():
    rows = []
    bytes_ = np.arange(1, 201, dtype=float)
    rng = np.random.default_rng(1)
    for seed in range(2):
        for v, shift in (("raw", 0.0), ("bad", 0.2)):
            bpb = 1.5 + shift + 0.05 * rng.standard_normal(200)
            rows += [{"variant": v, "model_size": "tiny", "tokens_per_param": None, "seed": seed,
                      "task": "heldout/all", "metric": "bits_per_byte", "example": f"d{i}", "value": float(b),
                      "weight": float(w), "chance": None} for i, (b, w) in enumerate(zip(bpb, bytes_, strict=True))]  # fmt: skip
    t = _table(rows)
    out = {r["variant"]: r for r in compare(t, "raw", iters=300).to_pylist()}
    assert out["bad"]["verdict"] == "worse"
    raw = [r for r in rows if r["variant"] == "raw"]
    expect = np.mean([sum(r["value"] * r["weight"] for r in raw if r["seed"] == s) / bytes_.sum() for s in (0, 1)])
    assert out["raw"]["mean"] == pytest.approx(expect)  # the weighted mean is sum(bits) / sum(bytes) per seed


def test_the_interval_covers_the_truth_at_about_its_level():
    rng = np.random.default_rng(2)
    covered = 0
    for rep in range(40):
        rows = []
        for seed in range(2):
            rows += _rows("raw", seed, rng.random(150) < 0.6)
        r = compare(_table(rows), "raw", iters=300, seed=rep).to_pylist()[0]
        covered += r["ci_low"] <= 0.6 <= r["ci_high"]
    assert 32 <= covered <= 40  # nominal 95 %: far fewer would mean a too-narrow interval


def test_results_are_deterministic_given_the_seed():
    rng = np.random.default_rng(3)
    rows = _rows("raw", 0, rng.random(50) < 0.5) + _rows("x", 0, rng.random(50) < 0.6)
    a, b = compare(_table(rows), "raw", iters=200), compare(_table(rows), "raw", iters=200)
    assert a.equals(b)


def test_centered_accuracy_averages_tasks_not_examples():
    rows = _rows("raw", 0, np.array([1, 1, 1, 1]), task="copa", chance=0.5)  # centered 1.0 on 4 examples
    rows += _rows("raw", 0, np.array([1, 0, 0, 0, 0, 0, 0, 0]), task="arc_easy", chance=0.25)  # 0.125 -> -1/6
    rows += _rows("raw", 0, np.array([1, 1]), task="mmlu_anatomy", chance=0.25)  # mmlu family: 1.0 ...
    rows += _rows("raw", 0, np.array([0, 0]), task="mmlu_virology", chance=0.25)  # ... and -1/3: mmlu = 1/3
    t = _table(rows)
    cen = centered_rows(t.select(EXAMPLE_SCHEMA.names))
    assert set(cen["task"].to_pylist()) == {CENTERED_TASK} and cen.num_rows == 16
    got = sum(v * w for v, w in zip(cen["value"].to_pylist(), cen["weight"].to_pylist(), strict=True))
    assert got == pytest.approx((1.0 + (0.125 - 0.25) / 0.75 + 1 / 3) / 3)


def test_direction_is_in_the_table_for_both_kinds_of_metric():
    rng = np.random.default_rng(3)
    rows = []
    for seed in range(3):
        rows += _rows("raw", seed, rng.random(300) < 0.5) + _rows("good", seed, rng.random(300) < 0.8)
        for v, bpb in (("raw", 1.5), ("good", 1.2)):  # lower bits/byte is better
            rows += [{"variant": v, "model_size": "tiny", "tokens_per_param": None, "seed": seed, "task": "heldout/web",
                      "metric": "bits_per_byte", "example": f"d{i}", "value": bpb + 0.05 * rng.standard_normal(),
                      "weight": 100.0, "chance": None} for i in range(200)]  # fmt: skip
    out = {(r["variant"], r["metric"]): r for r in compare(_table(rows), "raw", iters=300).to_pylist()}
    assert out[("good", "acc")]["higher_is_better"] is True and out[("good", "acc")]["delta"] > 0
    assert out[("good", "bits_per_byte")]["higher_is_better"] is False and out[("good", "bits_per_byte")]["delta"] < 0
    assert out[("good", "acc")]["verdict"] == out[("good", "bits_per_byte")]["verdict"] == "better"


def test_holm_controls_false_positives_over_many_null_comparisons():
    """10 null comparisons per table, 40 tables (seeded, so the outcome is fixed: 0 vs 10 here). Unadjusted, up to
    1 - 0.95^10 = 40 % of tables could show a false "better"/"worse"; Holm bounds the share of tables with any at
    alpha."""
    flagged_tables = flagged_raw_tables = 0
    for gen in range(40):
        rng = np.random.default_rng(100 + gen)
        rows = []
        for seed in range(3):
            rows += _rows("raw", seed, rng.random(200) < 0.5, task="t")
            for k in range(10):
                rows += _rows(f"v{k:02d}", seed, rng.random(200) < 0.5, task="t")
        out = [r for r in compare(_table(rows), "raw", iters=100, seed=gen).to_pylist() if r["variant"] != "raw"]
        assert all(r["correction"] == "holm" and r["p_adjusted"] >= r["p_value"] for r in out)
        flagged_tables += any(r["verdict"] in ("better", "worse") for r in out)
        flagged_raw_tables += any(r["p_value"] < 0.05 for r in out)
    assert flagged_tables <= 0.05 * 40 + 3  # at the nominal rate (binomial slack: mean 2, sd ~1.4)
    assert flagged_raw_tables >= 8  # without the correction the same data would have been flagged often (10 of 40)


def test_holm_adjustment_is_the_step_down_procedure():
    from tasks.evaluate.compare import holm

    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1 and monotone


def test_a_planted_difference_survives_the_correction():
    rng = np.random.default_rng(7)
    rows = []
    for seed in range(3):
        rows += _rows("raw", seed, rng.random(400) < 0.5, task="t")
        rows += _rows("good", seed, rng.random(400) < 0.75, task="t")
        for k in range(10):
            rows += _rows(f"null{k}", seed, rng.random(400) < 0.5, task="t")
    out = {r["variant"]: r for r in compare(_table(rows), "raw", iters=500).to_pylist()}
    assert out["good"]["verdict"] == "better" and out["good"]["p_adjusted"] < 0.05


def test_two_seeds_give_an_examples_only_interval_and_say_so():
    rng = np.random.default_rng(5)
    two, three = [], []
    for seed in range(3):
        r = _rows("raw", seed, rng.random(200) < 0.5) + _rows("other", seed, rng.random(200) < 0.6)
        three += r
        if seed < 2:
            two += r
    out2 = _by_variant(compare(_table(two), "raw", iters=300))
    out3 = _by_variant(compare(_table(three), "raw", iters=300))
    assert out2["other"]["interval"] == "examples only (n_seeds < 3)"
    assert out3["other"]["interval"] == "seeds and examples"
    # with 2 seeds a seed resample has 3 distinct outcomes: the examples-only interval must not collapse to them
    assert out2["other"]["ci_high"] - out2["other"]["ci_low"] > 0.02


def test_heldout_macro_average_weighs_domains_equally():
    from tasks.evaluate.compare import MACRO_TASK, macro_rows

    ex = pa.Table.from_pylist(
        [{"task": "heldout/code", "metric": "bits_per_byte", "example": f"c{i}", "value": 3.0, "weight": 10_000.0,
          "chance": None} for i in range(5)]
        + [{"task": "heldout/web", "metric": "bits_per_byte", "example": f"w{i}", "value": 1.0, "weight": 100.0,
            "chance": None} for i in range(20)]
        + [{"task": "heldout/all", "metric": "bits_per_byte", "example": "x", "value": 9.0, "weight": 1.0,
            "chance": None}], schema=EXAMPLE_SCHEMA)  # fmt: skip
    m = macro_rows(ex)
    assert set(m["task"].to_pylist()) == {MACRO_TASK} and m.num_rows == 25
    v, w = (np.array(m[c].to_pylist()) for c in ("value", "weight"))
    assert (v * w).sum() / w.sum() == pytest.approx(2.0)  # (3 + 1) / 2, while the byte-weighted mean is ~2.92
