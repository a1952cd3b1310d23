-- title: Experiment comparison
-- order: 13
-- description: One row per task and per model/data version, one column per metric (PIVOT groups by every other column); an experiment dataset reads its experiment table, any other dataset its evaluate.
-- chart: table
-- empty: run `quarry run experiment datasets_cfg/tiny_experiment.yaml`
PIVOT (SELECT * EXCLUDE (stderr, n) FROM {view:experiment|evaluate})
ON metric USING first(value)
ORDER BY ALL
