-- title: Experiment comparison
-- order: 13
-- description: One row per task and per model/data version the evaluation table carries, one column per metric (PIVOT groups by every other column).
-- chart: table
-- empty: run `quarry run experiment datasets_cfg/tiny.yaml`
PIVOT (SELECT * EXCLUDE (stderr, n) FROM {last:task,metric,value,stderr,n})
ON metric USING first(value)
ORDER BY ALL
