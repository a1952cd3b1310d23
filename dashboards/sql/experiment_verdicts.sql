-- title: Experiment verdicts (mean over seeds, 95 % interval, paired test vs the baseline)
-- order: 14
-- description: Per task and metric, each variant's mean over seeds with its bootstrap interval (examples and seeds resampled), and against the baseline variant the paired difference on the same examples, its interval, the sign-flip p-value and the verdict: better / worse only when the p-value is under alpha and the interval excludes 0, else within noise. core_centered is the DCLM aggregate (accuracy centered against chance, averaged over tasks).
-- chart: table
-- empty: run `quarry run experiment datasets_cfg/tiny_experiment.yaml`, then pick its dataset `tiny_matrix` (the recipe's experiment.name) in the sidebar
SELECT task, metric, model_size, variant, n_seeds, n_examples, round(mean, 4) AS mean, round(ci_low, 4) AS ci_low,
       round(ci_high, 4) AS ci_high, baseline, round(delta, 4) AS delta, round(delta_ci_low, 4) AS delta_ci_low,
       round(delta_ci_high, 4) AS delta_ci_high, round(p_value, 4) AS p_value, verdict
FROM {view:experiment}
ORDER BY task, metric, model_size, variant = baseline DESC, variant
