import hashlib
import json
import math
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from tasks.common.eval_sets import ALL_TASKS, write_task_configs
from tasks.evaluate.harness import EvaluateParams, harness_eval, heldout_bpb
from tasks.train.lm_model import CausalLMWithMTP
from tasks.train.trainer import TrainParams, export_hf

EVAL_DIR = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "eval"
TWO_COPA = [
    {
        "query": "The man turned on the faucet, therefore",
        "choices": ["the toilet filled.", "water flowed."],
        "gold": 1,
    },
    {
        "query": "The girl found a bug in her cereal, therefore",
        "choices": ["she ate it.", "she lost her appetite."],
        "gold": 0,
    },
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A random tiny Llama with a wide init so that choices get clearly different log-likelihoods."""
    torch.manual_seed(0)
    model = CausalLMWithMTP(TrainParams(init_std=0.3), vocab_size=49152, seq_len=128, eos_id=0)
    out = tmp_path_factory.mktemp("model") / "hf"
    export_hf(model, {"tokenizer": "smollm2", "eos_id": 0, "seq_len": 128}, out)
    return out


def _reference_loglik(model, tok, context: str, continuation: str) -> float:
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    assert whole[: len(ctx)] == ctx
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
    return sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole)))


def test_harness_scores_match_hand_computed_loglikelihood(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (tmp_path / "gauntlet").mkdir()
    (tmp_path / "gauntlet" / "copa.jsonl").write_text("".join(json.dumps(d) + "\n" for d in TWO_COPA))
    table, samples = harness_eval(
        model_dir, EvaluateParams(eval_dir=str(tmp_path), tasks=("copa",), batch_size=2), return_samples=True
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    got = {(r["doc_index"], r["request"]): r["loglik"] for r in samples.to_pylist()}
    correct = 0
    for i, doc in enumerate(TWO_COPA):
        ref = [_reference_loglik(model, tok, doc["query"], " " + c) for c in doc["choices"]]
        for j, value in enumerate(ref):
            assert got[(i, j)] == pytest.approx(value, abs=1e-4)  # fp32 model, fp64 reference
        assert ref[0] != pytest.approx(ref[1], abs=1e-3)  # the test can tell choices apart
        correct += int(max(range(2), key=ref.__getitem__) == doc["gold"])
    row = {(r["task"], r["metric"]): r for r in table.to_pylist()}[("copa", "acc")]
    assert row["value"] == correct / 2 and row["n"] == 2
    assert table.schema.names[:5] == ["task", "metric", "value", "stderr", "n"]


def test_every_row_says_how_it_was_produced_and_a_rerun_is_identical(model_dir, tmp_path):
    from importlib.metadata import version

    (tmp_path / "gauntlet").mkdir()
    (tmp_path / "gauntlet" / "copa.jsonl").write_text("".join(json.dumps(d) + "\n" for d in TWO_COPA))
    params = EvaluateParams(eval_dir=str(tmp_path), tasks=("copa",), batch_size=2, num_fewshot=1, fewshot_seed=7)
    first, ex1 = harness_eval(model_dir, params, return_examples=True)
    again, ex2 = harness_eval(model_dir, params, return_examples=True)
    assert first.equals(again) and ex1.equals(ex2)  # same numbers, same provenance, every example
    row = first.to_pylist()[0]
    assert row["harness_version"] == f"lm_eval=={version('lm_eval')}"
    assert (row["num_fewshot"], row["fewshot_seed"], row["batch_size"], row["dtype"], row["device"]) == (
        1, 7, 2, "float32", "cpu")  # fmt: skip
    assert row["eval_file_hash"] == hashlib.sha256(
        b"gauntlet/copa.jsonl" + (tmp_path / "gauntlet" / "copa.jsonl").read_bytes()).hexdigest()  # fmt: skip
    # the examples are the per-document scores the aggregate is the mean of; chance = 1 / 2 choices
    assert ex1.num_rows == 2 and set(ex1["chance"].to_pylist()) == {0.5}
    assert sum(ex1["value"].to_pylist()) / 2 == row["value"]
    # changing the eval file changes its hash; changing the prompt format changes the config hash
    (tmp_path / "gauntlet" / "copa.jsonl").write_text(json.dumps(TWO_COPA[0]) + "\n")
    other = harness_eval(model_dir, params).to_pylist()[0]
    assert other["eval_file_hash"] != row["eval_file_hash"] and other["task_config_hash"] == row["task_config_hash"]


def test_prompt_formats_are_spelled_out_in_every_task_config(tmp_path):
    from tasks.common.eval_sets import PROMPT_FORMAT, SPECS

    for task, spec in SPECS.items():
        assert {"output_type", "doc_to_text", "doc_to_target", "metrics", *PROMPT_FORMAT} <= set(spec), task
    if EVAL_DIR.is_dir():
        write_task_configs(EVAL_DIR, tmp_path, ("copa", "winogrande", "lambada", "mmlu"))
        for name in ("quarry_copa", "quarry_winogrande", "quarry_lambada", "quarry_mmlu_anatomy"):
            text = (tmp_path / f"{name}.yaml").read_text()
            for key in ("doc_to_text", "doc_to_target", "target_delimiter", "fewshot_delimiter", "output_type"):
                assert f"\n{key}: " in text, (name, key)


def test_unknown_task_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(KeyError, match="nope"):
        write_task_configs(tmp_path, tmp_path / "out", ("nope",))
    with pytest.raises(FileNotFoundError, match="copa"):
        write_task_configs(tmp_path, tmp_path / "out", ("copa",))


@pytest.mark.skipif(not EVAL_DIR.is_dir(), reason=f"shared eval data absent: {EVAL_DIR}")
def test_every_local_task_runs_through_the_harness(model_dir):
    table = harness_eval(model_dir, EvaluateParams(eval_dir=str(EVAL_DIR), tasks=ALL_TASKS, limit=2, batch_size=8))
    rows = {(r["task"], r["metric"]): r for r in table.to_pylist()}
    for task in ("arc_easy", "arc_challenge", "piqa", "boolq", "openbookqa", "copa", "winogrande", "hellaswag"):
        assert rows[(task, "acc")]["n"] == 2 and 0 <= rows[(task, "acc")]["value"] <= 1
    assert rows[("lambada", "perplexity")]["value"] > 1
    assert rows[("mmlu", "acc")]["n"] == 2 * 57


def test_bits_per_byte_matches_the_definition(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    docs = pa.table(
        {
            "text": ["Hello world, this is a test.", "def f(x): return x", "Another plain sentence here.", None],
            "domain": ["web", "code", "web", "web"],
        }
    )
    table = heldout_bpb(model_dir, docs, EvaluateParams())
    rows = {(r["task"], r["metric"]): r for r in table.to_pylist()}
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    nll = nbytes = ntok = 0.0
    for text in ["Hello world, this is a test.", "Another plain sentence here."]:
        ids = [0, *tok(text)["input_ids"]]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        nll -= sum(float(logp[i - 1, ids[i]]) for i in range(1, len(ids)))
        nbytes += len(text.encode())
        ntok += len(ids) - 1
    assert rows[("heldout/web", "bits_per_byte")]["value"] == pytest.approx(nll / math.log(2) / nbytes, rel=1e-4)
    assert rows[("heldout/web", "perplexity")]["value"] == pytest.approx(math.exp(nll / ntok), rel=1e-4)
    assert rows[("heldout/web", "bits_per_byte")]["n"] == 2 and rows[("heldout/web", "docs_skipped")]["n"] == 1
    assert rows[("heldout/all", "bits_per_byte")]["n"] == 3
    # per-document rows: bits/byte weighted by bytes average back to the domain's score
    table2, ex = heldout_bpb(model_dir, docs, EvaluateParams(), return_examples=True)
    assert table2.equals(table)  # a re-run scores identically
    web = [r for r in ex.to_pylist() if r["task"] == "heldout/web"]
    assert [r["example"] for r in web] == ["0", "2"]  # row numbers when the docs carry no doc_id
    assert sum(r["value"] * r["weight"] for r in web) / sum(r["weight"] for r in web) == pytest.approx(
        rows[("heldout/web", "bits_per_byte")]["value"])  # fmt: skip
    assert rows[("heldout/web", "bits_per_byte")]["harness_version"].startswith("quarry.heldout_bpb")


def test_bits_per_byte_windows_cover_long_documents(model_dir):
    docs = pa.table({"text": ["word " * 300], "domain": ["web"]})
    short = heldout_bpb(model_dir, docs, EvaluateParams(max_length=32))
    full = heldout_bpb(model_dir, docs, EvaluateParams())
    assert short["n"][0].as_py() == 1 and math.isfinite(short["value"][0].as_py())
    # a random model barely uses context, so the windowed score stays close to the full-context one
    assert short["value"][0].as_py() == pytest.approx(full["value"][0].as_py(), rel=0.1)
