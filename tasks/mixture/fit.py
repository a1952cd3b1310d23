"""From mixture weights to a target: LightGBM (as RegMix) and a linear baseline, scored by held-out Spearman rho,
and the predicted optimum from a large simulated sample.

* Held-out rho: k-fold cross-validation over the proxy runs, every mixture predicted by a model not fitted on it;
  Spearman's rank correlation of those predictions with the observed targets (RegMix reports rank correlation,
  since the search only needs the order of mixtures right).
* Optimum: RegMix (sec. 3.3) predicts a large simulated sample of mixtures from the same Dirichlet and averages the
  top-k (lowest predicted target): averaging smooths the regressor's noise, and the mean of mixtures within the
  availability caps is within them (the caps are linear). The predictor is the recipe's ``optimum_model``;
  "best" takes the one with the higher held-out rho (LightGBM needs many runs; at a handful the line may rank better).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

MODELS = ("lightgbm", "linear")


def make_model(kind: str, seed: int):
    if kind == "linear":
        from sklearn.linear_model import LinearRegression

        return LinearRegression()
    if kind == "lightgbm":
        import lightgbm

        # small-data settings: RegMix fits 512 runs; a search of tens needs leaves of 2 and no minimum bin size
        return lightgbm.LGBMRegressor(n_estimators=100, learning_rate=0.1, num_leaves=7, min_child_samples=2,
                                      min_data_in_bin=1, subsample=1.0, random_state=seed, deterministic=True,
                                      n_jobs=1, verbose=-1)
    raise ValueError(f"unknown mixture model {kind!r}; known: {MODELS}")


def cv_predictions(kind: str, x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each run's target predicted by a model fitted on the other folds (folds >= 2, at most one run per fold)."""
    n = len(y)
    k = max(2, min(folds, n))
    order = np.random.default_rng(seed).permutation(n)
    pred = np.empty(n)
    for f in range(k):
        test = order[f::k]
        train = np.setdiff1d(order, test)
        pred[test] = make_model(kind, seed).fit(x[train], y[train]).predict(x[test])
    return pred


def rho(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rho; None where either side is constant (undefined)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def fit(x: np.ndarray, y: np.ndarray, *, folds: int, seed: int) -> dict:
    """Per model: held-out predictions and rho, and the model fitted on every run."""
    if len(y) < 4:
        raise ValueError(f"mixture: {len(y)} proxy runs cannot be cross-validated; use n_mixtures >= 4")
    out = {}
    for kind in MODELS:
        pred = cv_predictions(kind, x, y, folds, seed)
        out[kind] = {"heldout_pred": pred, "heldout_rho": rho(pred, y), "model": make_model(kind, seed).fit(x, y)}
    return out


def choose(fits: dict, optimum_model: str) -> str:
    if optimum_model != "best":
        return optimum_model
    return max(MODELS, key=lambda k: -2.0 if fits[k]["heldout_rho"] is None else fits[k]["heldout_rho"])


def optimum(model, simulated: np.ndarray, top_k: int) -> tuple[np.ndarray, float]:
    """The mean of the top_k simulated mixtures with the lowest predicted target, and that mean's prediction."""
    pred = model.predict(simulated)
    top = simulated[np.argsort(pred, kind="stable")[: max(1, min(top_k, len(simulated)))]]
    w = top.mean(axis=0)
    return w / w.sum(), float(model.predict(w[None, :])[0])


def shuffled_rho(x: np.ndarray, y: np.ndarray, *, folds: int, seed: int, kind: str, repeats: int = 5) -> float:
    """The mean held-out rho with the targets permuted against the weights: what a fit finds in no signal (~0)."""
    rng = np.random.default_rng(seed + 1)
    vals = [rho(cv_predictions(kind, x, y[p], folds, seed), y[p]) for p in (rng.permutation(len(y)) for _ in range(repeats))]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else 0.0
