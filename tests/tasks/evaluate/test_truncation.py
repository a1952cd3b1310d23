"""A prompt longer than the model's context is counted per task (n_truncated) and warned about, never silent."""

import json
import logging

import torch

from tasks.evaluate.harness import RESULT_SCHEMA, EvaluateParams, harness_eval
from tasks.train.lm_model import CausalLMWithMTP
from tasks.train.trainer import TrainParams, export_hf

SEQ_LEN = 16  # the model's context: the long queries below need ~30 tokens


def _copa(query: str, choices: tuple[str, str]) -> dict:
    return {"query": query, "choices": list(choices), "gold": 0}


SHORT = [_copa("It rained, therefore", ("we stayed in.", "we swam.")),
         _copa("He ran, therefore", ("he was tired.", "he slept."))]  # fmt: skip
LONG = [_copa("The old man who lived at the end of the long and winding road beside the river finally decided to "
              "sell his farm, therefore", ("he moved.", "he stayed.")),
        _copa("After many weeks of careful planning, saving money and reading every guide book in the library, the "
              "family left for their holiday, therefore", ("they were happy.", "they were sad.")),
        _copa("Because the committee could not agree on the budget for the new school building after three long "
              "meetings, therefore", ("they met again.", "they voted."))]  # fmt: skip


def test_truncated_examples_are_counted_per_task_and_warned(tmp_path, caplog):
    torch.manual_seed(0)
    model = CausalLMWithMTP(TrainParams(), vocab_size=49152, seq_len=SEQ_LEN, eos_id=0)
    model_dir = tmp_path / "hf"
    export_hf(model, {"tokenizer": "smollm2", "eos_id": 0, "seq_len": SEQ_LEN}, model_dir)
    (tmp_path / "gauntlet").mkdir()
    docs = SHORT + LONG
    (tmp_path / "gauntlet" / "copa.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "gauntlet" / "piqa.jsonl").write_text("".join(json.dumps(d) + "\n" for d in SHORT))

    with caplog.at_level(logging.WARNING, logger="quarry"):
        table, samples = harness_eval(model_dir, EvaluateParams(eval_dir=str(tmp_path), tasks=("copa", "piqa"),
                                                                batch_size=4), return_samples=True)

    # the expectation from the harness's own requests, tokenized whole: more than context + 1 tokens is cut
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    cut: dict[str, set] = {"copa": set(), "piqa": set()}
    for r in samples.to_pylist():
        if len(tok(r["context"] + r["continuation"], add_special_tokens=False)["input_ids"]) > SEQ_LEN + 1:
            cut[r["task"]].add(r["doc_index"])
    assert len(cut["copa"]) == len(LONG) and not cut["piqa"]  # the data does what the test means it to
    rows = {(r["task"], r["metric"]): r for r in table.to_pylist()}
    assert rows[("copa", "acc")]["n_truncated"] == len(cut["copa"]) == 3
    assert rows[("copa", "acc")]["n"] == len(docs)
    assert rows[("piqa", "acc")]["n_truncated"] == 0
    assert table.schema == RESULT_SCHEMA
    warned = [m for m in caplog.messages if "left-truncated" in m]
    assert len(warned) == 1 and "task copa: 3 example(s)" in warned[0] and f"of {SEQ_LEN} tokens" in warned[0]
