-- title: Experiment comparison
-- order: 13
-- description: One row per task and per model/data version, one column per metric (PIVOT groups by every other column); an experiment dataset reads its per-cell table (variant, size, tokens per parameter, seed), any other dataset its evaluate. Provenance (harness version, hashes, few-shot, batch, dtype, device) is in the evaluate view.
-- chart: table
-- empty: run `quarry run experiment datasets_cfg/tiny_experiment.yaml`, then pick its dataset `tiny_matrix` (the recipe's experiment.name) in the sidebar
PIVOT (SELECT * EXCLUDE (stderr, n, harness_version, task_config_hash, eval_file_hash, num_fewshot, fewshot_seed,
                         batch_size, dtype, device) FROM {view:experiment_cells|evaluate})
ON metric USING first(value)
ORDER BY ALL
