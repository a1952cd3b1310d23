-- title: Mixture search: validation verdicts (each mixture vs the natural one, seeds and examples bootstrapped)
-- order: 19
-- description: The predicted optimum, uniform and the hkmeans-balanced sample each trained with several seeds and compared with the natural mixture on the same held-out examples (tasks/evaluate/compare.py): mean over seeds with its bootstrap interval, the paired difference, the sign-flip p-value Holm-adjusted over the table, and the verdict (better / worse only when the adjusted p-value is under alpha and the interval excludes 0). higher_is_better gives the metric's direction; interval says whether seeds were resampled (3 or more) or examples only.
-- chart: table
-- empty: run `quarry run mixture datasets_cfg/tiny_mixture.yaml` (mixture.validate: true), then pick its dataset `tiny_mix` in the sidebar
SELECT task, metric, higher_is_better, variant AS arm, model_size, n_seeds, n_examples, interval, round(mean, 4) AS mean,
       round(ci_low, 4) AS ci_low, round(ci_high, 4) AS ci_high, round(delta, 4) AS delta,
       round(delta_ci_low, 4) AS delta_ci_low, round(delta_ci_high, 4) AS delta_ci_high,
       round(p_adjusted, 4) AS p_adjusted, verdict
FROM {view:mixture_validate}
ORDER BY task, metric, variant = baseline DESC, variant
