-- title: Experiment verdicts (mean over seeds, 95 % interval, paired test vs the baseline)
-- order: 14
-- description: Per task and metric, each variant's mean over seeds with its bootstrap interval (examples and seeds resampled), and against the baseline variant the paired difference on the same examples, its interval, the sign-flip p-value, that p-value Holm-adjusted over every judged row (p_adjusted: many rows are judged at once) and the verdict: better / worse only when the adjusted p-value is under alpha and the interval excludes 0, else within noise. higher_is_better gives each metric's direction (bits/byte: lower is better). interval says whether seeds were resampled (3 or more seeds) or examples only. heldout/macro averages the domains' bits/byte (heldout/all weighs bytes, so long-document domains decide it). n_truncated counts examples scored on a left-truncated prompt. core_centered is the DCLM aggregate (accuracy centered against chance, averaged over tasks).
-- chart: table
-- empty: run `quarry run experiment datasets_cfg/tiny_experiment.yaml`, then pick its dataset `tiny_matrix` (the recipe's experiment.name) in the sidebar
SELECT task, metric, higher_is_better, model_size, variant, n_seeds, n_examples, interval, round(mean, 4) AS mean, round(ci_low, 4) AS ci_low,
       round(ci_high, 4) AS ci_high, baseline, round(delta, 4) AS delta, round(delta_ci_low, 4) AS delta_ci_low,
       round(delta_ci_high, 4) AS delta_ci_high, round(p_value, 4) AS p_value, round(p_adjusted, 4) AS p_adjusted, verdict, n_truncated
FROM {view:experiment}
ORDER BY task, metric, model_size, variant = baseline DESC, variant
