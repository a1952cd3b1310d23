"""The Gadre et al. 2024 fitter on points drawn from a known law: it recovers the parameters and predicts the
held-out largest-compute runs."""

import numpy as np
import pytest

from tasks.evaluate.scaling import error_law, fit_and_predict, fit_error, fit_loss, loss_law, non_embedding_params
from tasks.train.trainer import MODEL_PRESETS

# Chinchilla's fit (Hoffmann et al. 2022: E=1.69, A=406.4, B=410.7, alpha~0.34) with alpha = beta, rewritten as
# Gadre et al. Eq. (4): eta = alpha / 2, a = A * 6^eta, b = B * 6^eta.
ETA = 0.17
TRUE = {"e": 1.69, "a": 406.4 * 6**ETA, "b": 410.7 * 6**ETA, "eta": ETA}


def _grid(noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = np.array([1.1e7, 2.5e7, 5.0e7, 1.0e8, 2.0e8])
    mult = np.array([10.0, 20.0, 40.0, 80.0])
    nn, mm = (x.ravel() for x in np.meshgrid(n, mult))
    c = 6 * nn * (mm * nn)
    loss = loss_law(c, mm, **TRUE) * (1 + noise * rng.standard_normal(len(c)))
    return nn, mm, c, loss


def test_loss_law_parameters_are_recovered_from_noiseless_points():
    _, m, c, loss = _grid(0.0)
    fit = fit_loss(c, m, loss)
    assert fit.params["E"] == pytest.approx(TRUE["e"], rel=1e-3)
    assert fit.params["eta"] == pytest.approx(TRUE["eta"], rel=1e-3)
    assert fit.params["a"] == pytest.approx(TRUE["a"], rel=1e-2)
    assert fit.params["b"] == pytest.approx(TRUE["b"], rel=1e-2)
    assert fit.rmse < 1e-6 and len(fit.residuals) == len(c)


def test_noisy_small_runs_predict_the_largest_run():
    n, m, c, loss = _grid(0.003, seed=1)
    points = [{"n_params": float(a), "tokens": float(a * b), "loss": float(x), "error": None}
              for a, b, x in zip(n, m, loss, strict=True)]
    out = fit_and_predict(points)
    held = [r for r in out["rows"] if r["role"] == "heldout"]
    assert len(held) == 1 and held[0]["n_params"] == n.max() and held[0]["tokens_per_param"] == m.max()
    # the paper reports ~1-4 % relative error in extrapolation; noise of 0.3 % per point keeps us well inside that
    assert held[0]["relative_error"] < 0.02
    assert out["loss_fit"]["eta"] == pytest.approx(ETA, rel=0.2) and out["loss_fit"]["n_fit"] == len(c) - 1
    assert out["error_fit"] is None  # no downstream errors given


def test_error_law_is_recovered_and_chained_through_the_predicted_loss():
    true = {"eps": 0.78, "k": 2.5, "gamma": 0.9}
    loss = np.linspace(2.2, 4.5, 9)
    err = error_law(loss, **true)
    fit = fit_error(loss, err)
    for k, v in true.items():
        assert fit.params[k] == pytest.approx(v, rel=1e-3)
    n, m, c, lo = _grid(0.0)
    points = [{"n_params": float(a), "tokens": float(a * b), "loss": float(x), "error": float(error_law(x, **true))}
              for a, b, x in zip(n, m, lo, strict=True)]
    out = fit_and_predict(points)
    held = {r["quantity"]: r for r in out["rows"] if r["role"] == "heldout"}
    assert held["error"]["relative_error"] < 1e-3 and held["loss"]["relative_error"] < 1e-6


def test_too_few_points_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 5"):
        fit_loss([1e15, 2e15, 4e15], [20, 20, 20], [3.0, 2.9, 2.8])
    with pytest.raises(ValueError, match="distinct"):
        fit_loss([1e15] * 5, [20] * 5, [3.0] * 5)


def test_non_embedding_params_count_the_model():
    from tasks.train.lm_model import CausalLMWithMTP
    from tasks.train.trainer import TrainParams

    model = CausalLMWithMTP(TrainParams.preset("tiny"), vocab_size=1000, seq_len=16, eos_id=0)
    total = sum(p.numel() for p in model.parameters())
    embed = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" in n or "lm_head" in n)
    assert non_embedding_params(**MODEL_PRESETS["tiny"]) == total - embed
