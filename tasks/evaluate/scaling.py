"""Scaling laws in compute and over-training, after Gadre et al. 2024 ("Language models scale reliably with
over-training and on downstream tasks", arXiv 2403.08540):

* Eq. (4), loss in compute C = 6ND and the token multiplier M = D/N (Chinchilla's E + A N^-a + B D^-b with a = b,
  rewritten in C and M):          L(C, M) = E + (a * M^eta + b * M^-eta) * C^-eta
* Eq. (5), loss -> average top-1 downstream error:  Err(L) = eps - k * exp(-gamma * L)

Both are fitted by nonlinear least squares (scipy's trust-region reflective solver, positive parameters, several
starting exponents as the paper's fits start from a grid) on the small runs; the runs of largest compute are held
out and predicted, and the prediction is scored by relative error |pred - obs| / obs, as the paper reports it.
N is the model's non-embedding parameter count (Kaplan et al. 2020's convention): our 49k-token vocabulary would
otherwise make the embedding most of a tiny model's parameters and hide its size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def loss_law(c, m, e: float, a: float, b: float, eta: float):
    """Gadre et al. Eq. (4)."""
    c, m = np.asarray(c, dtype=np.float64), np.asarray(m, dtype=np.float64)
    return e + (a * m**eta + b * m**-eta) * c**-eta


def error_law(loss, eps: float, k: float, gamma: float):
    """Gadre et al. Eq. (5)."""
    return eps - k * np.exp(-gamma * np.asarray(loss, dtype=np.float64))


def non_embedding_params(hidden_size: int, num_layers: int, num_heads: int, num_kv_heads: int,
                         intermediate_size: int, **_: object) -> int:
    """Llama blocks: q/o (d x d), k/v (d x d*kv/heads), SwiGLU (3 x d x ff), two RMSNorms; plus the final norm."""
    d = hidden_size
    kv = d * num_kv_heads // num_heads
    return num_layers * (2 * d * d + 2 * d * kv + 3 * d * intermediate_size + 2 * d) + d


@dataclass(frozen=True)
class Fit:
    params: dict[str, float]
    residuals: list[float]  # observed - fitted, on the fit points
    rmse: float


def _least_squares(fun, starts: list[np.ndarray], lower, upper) -> np.ndarray:
    from scipy.optimize import least_squares

    best = None
    for x0 in starts:
        try:
            r = least_squares(fun, x0, bounds=(lower, upper), method="trf", x_scale="jac", max_nfev=20000)
        except ValueError:  # a start outside what the model can evaluate
            continue
        if np.all(np.isfinite(r.fun)) and (best is None or r.cost < best.cost):
            best = r
    if best is None:
        raise ValueError("the scaling-law fit did not converge from any start")
    return best.x


def fit_loss(c, m, loss) -> Fit:
    """Fit Eq. (4) to observed (C, M, L); needs more points than its 4 parameters."""
    c, m, loss = (np.asarray(x, dtype=np.float64) for x in (c, m, loss))
    if len(loss) < 5:
        raise ValueError(f"Eq. (4) has 4 parameters: fitting it needs at least 5 runs, got {len(loss)}")
    if len(set(zip(np.round(np.log(c), 9), np.round(np.log(m), 9), strict=True))) < 5:
        raise ValueError("Eq. (4) needs at least 5 distinct (compute, tokens-per-parameter) points")
    logc = np.log(c)

    def resid(x):  # x = (E, log a, log b, eta): log-coefficients keep a, b positive and well scaled
        e, la, lb, eta = x
        return e + np.exp(la + eta * np.log(m) - eta * logc) + np.exp(lb - eta * np.log(m) - eta * logc) - loss

    starts = []
    for eta in (0.05, 0.1, 0.2, 0.35, 0.5):
        for e in (0.0, 0.5 * loss.min(), 0.9 * loss.min()):
            la = lb = math.log(max(loss.mean() - e, 1e-3) / 2) + eta * float(logc.mean())
            starts.append(np.array([e, la, lb, eta]))
    x = _least_squares(resid, starts, [0.0, -50.0, -50.0, 1e-3], [float(loss.min()), 200.0, 200.0, 3.0])
    r = -resid(x)
    return Fit({"E": float(x[0]), "a": math.exp(x[1]), "b": math.exp(x[2]), "eta": float(x[3])},
               [float(v) for v in r], float(np.sqrt(np.mean(r**2))))  # fmt: skip


def fit_error(loss, err) -> Fit:
    """Fit Eq. (5) to observed (L, average top-1 error); needs more points than its 3 parameters."""
    loss, err = np.asarray(loss, dtype=np.float64), np.asarray(err, dtype=np.float64)
    if len(loss) < 4:
        raise ValueError(f"Eq. (5) has 3 parameters: fitting it needs at least 4 runs, got {len(loss)}")

    def resid(x):  # x = (eps, log k, gamma)
        return x[0] - np.exp(x[1] - x[2] * loss) - err

    starts = [np.array([max(err.max(), 0.5), g * float(loss.mean()) + math.log(0.5), g]) for g in (0.1, 0.5, 1.0, 2.0)]
    x = _least_squares(resid, starts, [0.0, -50.0, 1e-4], [1.5, 200.0, 50.0])
    r = -resid(x)
    return Fit({"eps": float(x[0]), "k": math.exp(x[1]), "gamma": float(x[2])}, [float(v) for v in r],
               float(np.sqrt(np.mean(r**2))))  # fmt: skip


def relative_error(pred: float, obs: float) -> float:
    return abs(pred - obs) / abs(obs)


def _naive(values: np.ndarray, compute: np.ndarray, last: float) -> dict[str, float]:
    return {"last": float(values[np.isclose(compute, last, rtol=1e-9)].mean()), "mean": float(values.mean())}


def _naive_cols(naive: dict[str, float], observed: float) -> dict[str, float]:
    return {"naive_last": naive["last"], "naive_last_relative_error": relative_error(naive["last"], observed),
            "naive_mean": naive["mean"], "naive_mean_relative_error": relative_error(naive["mean"], observed)}


def fit_and_predict(points: list[dict]) -> dict:
    """points: {n_params, tokens, loss, error (or None), ...} per run. Fits both laws on every run but those of the
    largest compute, predicts those (the error chained through the predicted loss, as Gadre et al. do) and returns
    the fitted parameters and one row per run (role fit/heldout, observed, predicted, residual, relative error)."""
    if len(points) < 6:
        raise ValueError(f"a scaling fit needs at least 6 runs (5 to fit Eq. (4), the largest compute to predict), "
                         f"got {len(points)}")  # fmt: skip
    c = np.array([6.0 * p["n_params"] * p["tokens"] for p in points])
    m = np.array([p["tokens"] / p["n_params"] for p in points])
    heldout = np.isclose(c, c.max(), rtol=1e-9)
    fit_idx = np.flatnonzero(~heldout)
    loss = np.array([p["loss"] for p in points])
    lf = fit_loss(c[fit_idx], m[fit_idx], loss[fit_idx])
    pred_loss = loss_law(c, m, **{"e": lf.params["E"], "a": lf.params["a"], "b": lf.params["b"], "eta": lf.params["eta"]})
    have_err = [i for i in fit_idx if points[i].get("error") is not None]
    ef = None
    if len(have_err) >= 4:
        ef = fit_error(loss[have_err], [points[i]["error"] for i in have_err])
    # Naive predictors, so the fit's held-out error has something to beat: the value of the largest-compute fitted
    # run ("last": scaling curves flatten, so repeating it is a strong baseline at small scale) and the fitted runs' mean
    last_c = c[fit_idx].max()
    naive = {"loss": _naive(loss[fit_idx], c[fit_idx], last_c)}
    if ef is not None:
        errs = np.array([points[i]["error"] for i in have_err])
        naive["error"] = _naive(errs, c[have_err], c[have_err].max())
    rows = []
    for i, p in enumerate(points):
        role = "heldout" if heldout[i] else "fit"
        rows.append({**p, "compute": float(c[i]), "tokens_per_param": float(m[i]), "role": role, "quantity": "loss",
                     "observed": float(loss[i]), "predicted": float(pred_loss[i]),
                     "residual": float(loss[i] - pred_loss[i]),
                     "relative_error": float(relative_error(pred_loss[i], loss[i])),
                     **_naive_cols(naive["loss"], float(loss[i]))})  # fmt: skip
        if ef is not None and p.get("error") is not None:
            pe = float(error_law(pred_loss[i], **ef.params))
            rows.append({**p, "compute": float(c[i]), "tokens_per_param": float(m[i]), "role": role,
                         "quantity": "error", "observed": float(p["error"]), "predicted": pe,
                         "residual": float(p["error"] - pe), "relative_error": float(relative_error(pe, p["error"])),
                         **_naive_cols(naive["error"], float(p["error"]))})  # fmt: skip
    return {"loss_fit": {**lf.params, "rmse": lf.rmse, "n_fit": len(fit_idx)},
            "error_fit": None if ef is None else {**ef.params, "rmse": ef.rmse, "n_fit": len(have_err)},
            "rows": rows}  # fmt: skip
