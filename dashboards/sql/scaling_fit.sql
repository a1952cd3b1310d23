-- title: Scaling-law fit: observed vs predicted (Gadre et al. 2024)
-- order: 15
-- description: Each run of a variant's scaling sweep: its observed held-out loss (nats/token) and average top-1 error against the fitted law (Eq. 4 for loss in compute and tokens per parameter, Eq. 5 for loss -> error). role=fit runs were fitted; role=heldout are the largest-compute runs, predicted from the others (their relative error is what to read). Points on the diagonal are perfect predictions. Beside the fit, two naive predictors (predictor=naive: last, the largest fitted compute's value; naive: mean, the fitted runs' mean): a fit whose held-out points are no nearer the diagonal than theirs has shown nothing.
-- chart: point x=observed y=predicted color=predictor facet=quantity resolve=x,y
-- empty: run `quarry run experiment datasets_cfg/tiny_experiment.yaml` (its experiment.scaling sweep), then pick its dataset `tiny_matrix` in the sidebar
SELECT quantity, variant, model_size, n_params, tokens, round(tokens_per_param, 4) AS tokens_per_param,
       compute, role, p.predictor, round(observed, 4) AS observed, round(p.predicted, 4) AS predicted,
       round(observed - p.predicted, 4) AS residual, round(p.relative_error, 4) AS relative_error
FROM {view:experiment_scaling},
     LATERAL (VALUES ('fit', predicted, relative_error), ('naive: last', naive_last, naive_last_relative_error),
                     ('naive: mean', naive_mean, naive_mean_relative_error)) AS p(predictor, predicted, relative_error)
ORDER BY quantity, variant, compute, predictor
