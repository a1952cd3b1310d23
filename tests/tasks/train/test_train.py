import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from tasks.train.lm_model import CausalLMWithMTP
from tasks.train.tokenize import PackParams, TokenizeParams, pack_sequences, save_packed, tokenize_docs
from tasks.train.trainer import TrainParams, _lr_factor, read_metrics, train

SHAKESPEARE = (
    Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "clean" / "tinyshakespeare" / "input.txt"
)
SEQ_LEN = 64


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"shared data absent: {SHAKESPEARE}")
    paras = [p for p in SHAKESPEARE.read_text()[:60_000].split("\n\n") if p.strip()]
    docs = pa.table({"doc_id": [str(i) for i in range(len(paras))], "text": paras, "domain": ["books"] * len(paras)})
    params = PackParams(seq_len=SEQ_LEN)
    out = tmp_path_factory.mktemp("packed")
    save_packed(pack_sequences(tokenize_docs(docs, TokenizeParams()), params), out)
    return out


TINY = dict(max_steps=30, micro_batch_size=4, warmup_steps=5, lr=3e-3, checkpoint_every=10)


def test_thirty_cpu_steps_reduce_the_loss(data_dir, tmp_path):
    summary = train(TrainParams(**TINY), data_dir, tmp_path)
    m = read_metrics(tmp_path)
    assert m["step"].to_pylist() == list(range(1, 31))
    loss = m["loss"].to_pylist()
    assert loss[0] > math.log(49152) - 1  # random init starts near uniform
    assert np.mean(loss[-5:]) < loss[0] - 2.0
    assert summary["steps"] == 30 and all(g > 0 for g in m["grad_norm"].to_pylist())
    assert all(v is None for v in m["mfu"].to_pylist())  # no GPU here


def test_final_model_loads_with_transformers_and_matches_training_loss(data_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    train(TrainParams(**{**TINY, "max_steps": 3}), data_dir, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.eos_token == "<|endoftext|>" and model.config.vocab_size == 49152
    ids = tok("To be, or not to be", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 49152) and torch.isfinite(logits).all()


def _run_with_crash(params, data_dir, out, crash_at):
    seen = []

    def report(row):
        seen.append(row["loss"])
        if row["step"] == crash_at:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        train(params, data_dir, out, report=report)
    return seen


def test_kill_and_resume_replays_the_same_loss_curve(data_dir, tmp_path):
    # 12 steps, checkpoints at 4 and 8, crash at 11: a resume from the last checkpoint and three replayed steps, as
    # the 20-step version checked, in 27 optimizer steps instead of 43
    params = TrainParams(**{**TINY, "max_steps": 12, "checkpoint_every": 4, "grad_accum_steps": 2})
    train(params, data_dir, tmp_path / "straight")
    straight = read_metrics(tmp_path / "straight")["loss"].to_pylist()

    _run_with_crash(params, data_dir, tmp_path / "killed", crash_at=11)  # last checkpoint: step 8
    resumed = train(params, data_dir, tmp_path / "killed")
    assert resumed["resumed_from"].endswith("step-00000008.pt")
    m = read_metrics(tmp_path / "killed")
    assert m["step"].to_pylist() == list(range(1, 13))  # replayed steps 9-11 are not duplicated
    np.testing.assert_allclose(m["loss"].to_pylist(), straight, rtol=0, atol=1e-6)
    again = train(params, data_dir, tmp_path / "killed")  # a finished run is a no-op that reports its result
    assert again["steps"] == 12 and again["final_loss"] == pytest.approx(straight[-1], abs=1e-6)
    assert read_metrics(tmp_path / "killed").num_rows == 12


def test_resume_with_changed_params_is_refused(data_dir, tmp_path):
    train(TrainParams(**{**TINY, "max_steps": 2, "checkpoint_every": 1}), data_dir, tmp_path)
    with pytest.raises(ValueError, match="different TrainParams"):
        train(TrainParams(**{**TINY, "max_steps": 2, "checkpoint_every": 1, "lr": 1e-3}), data_dir, tmp_path)


def test_data_order_depends_on_seed_only(data_dir, tmp_path):
    a = read_metrics_after(data_dir, tmp_path / "a", seed=1)
    b = read_metrics_after(data_dir, tmp_path / "b", seed=1)
    c = read_metrics_after(data_dir, tmp_path / "c", seed=2)
    assert a == b and a != c


def read_metrics_after(data_dir, out, seed):
    train(TrainParams(**{**TINY, "max_steps": 2, "seed": seed}), data_dir, out)
    return read_metrics(out)["loss"].to_pylist()


def test_multi_token_prediction_trains_and_exports_plain_llama(data_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    summary = train(TrainParams(**{**TINY, "max_steps": 8, "mtp_heads": 2}), data_dir, tmp_path)
    m = read_metrics(tmp_path)
    mtp = m["mtp_loss"].to_pylist()
    assert all(v is not None and v > 0 for v in mtp) and mtp[-1] < mtp[0]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert sum(t.numel() for t in model.parameters()) == summary["num_params"]  # heads dropped at export


def test_mtp_heads_are_causal():
    torch.manual_seed(0)
    model = CausalLMWithMTP(TrainParams(mtp_heads=1), vocab_size=50, seq_len=8, eos_id=0).eval()
    rows = torch.randint(1, 50, (1, 9))
    hidden = model.lm.model(input_ids=rows[:, :-1]).last_hidden_state
    rope = model.lm.model.rotary_emb(hidden, position_ids=torch.arange(8)[None])
    h1 = model.heads[0](hidden, position_ids=torch.arange(8)[None], position_embeddings=rope)
    rows2 = rows.clone()
    rows2[0, 6] = (rows[0, 6] + 1) % 50
    hidden2 = model.lm.model(input_ids=rows2[:, :-1]).last_hidden_state
    h2 = model.heads[0](hidden2, position_ids=torch.arange(8)[None], position_embeddings=rope)
    assert torch.allclose(h1[0, :6], h2[0, :6], atol=1e-6) and not torch.allclose(h1[0, 6:], h2[0, 6:])


def test_padding_targets_do_not_count():
    torch.manual_seed(0)
    model = CausalLMWithMTP(TrainParams(), vocab_size=50, seq_len=8, eos_id=0)
    rows = torch.randint(1, 50, (1, 9))
    full, _, _ = model(rows, torch.tensor([9]))
    rows_padded = rows.clone()
    rows_padded[0, 5:] = 0
    part, _, _ = model(rows_padded, torch.tensor([5]))
    ref, _, _ = model(rows[:, :5], torch.tensor([5]))  # same 4 targets without padding
    assert torch.allclose(part, ref, atol=1e-5) and part < full


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_schedule_warms_up_then_decays_to_the_floor(schedule):
    p = TrainParams(schedule=schedule, warmup_steps=10, max_steps=100, min_lr_ratio=0.1)
    f = [_lr_factor(s, p) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[-1] == pytest.approx(0.1, abs=0.02) and min(f[10:]) >= 0.1 - 1e-9
    if schedule == "wsd":
        assert f[10:80] == [1.0] * 70  # stable until the last 20 %
