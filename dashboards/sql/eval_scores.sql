-- title: Evaluation scores
-- order: 12
-- description: Every (task, metric) score of the latest evaluation, with its standard error and sample count.
-- chart: bar x=task y=value color=metric
-- empty: run `quarry run evaluate datasets_cfg/tiny.yaml`
SELECT task, metric, round(value, 4) AS value, round(stderr, 4) AS stderr, n
FROM {last:task,metric,value,stderr,n}
ORDER BY task, metric
