-- title: Mixture search: each proxy's target, observed vs predicted on held-out folds (RegMix)
-- order: 17
-- description: One point per proxy model (a Dirichlet-sampled mixture, tasks/mixture/sampler.py) and regression: its observed target (lower is better: bits/byte, accuracies negated) against the prediction of a model fitted on the other folds (cross-validated, so every point is held out). model=lightgbm is RegMix's regressor, model=linear its baseline; spearman is that model's held-out rank correlation over all proxies and shuffled the same with the targets permuted against the weights (what a fit finds in no signal). Points on the diagonal are perfect predictions; the search only needs their order right.
-- chart: point x=observed y=predicted color=model
-- empty: run `quarry run mixture datasets_cfg/tiny_mixture.yaml`, then pick its dataset `tiny_mix` (the recipe's mixture.name) in the sidebar
SELECT r.run, r.seed, m.model, round(r.observed, 4) AS observed,
       round(CASE m.model WHEN 'lightgbm' THEN r.pred_lightgbm ELSE r.pred_linear END, 4) AS predicted,
       round(m.heldout_spearman, 3) AS spearman, round(m.shuffled_spearman, 3) AS shuffled, m.chosen, r.weights
FROM {view:mixture_fit} r CROSS JOIN {view:mixture_fit_models} m
ORDER BY m.model, r.run
