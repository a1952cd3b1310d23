-- title: Evaluation scores
-- order: 12
-- description: Every (task, metric) score of the latest evaluate version, per model version, with its standard error (the error bars: +-1 stderr) and sample count; one chart per metric, each on its own scale (perplexity and accuracy do not share an axis; perplexity on a log scale, so one task's large value does not flatten the others), models side by side.
-- chart: bar x=task y=value color=model_version offset=model_version facet=metric resolve=x,y,xOffset error=stderr log=perplexity
-- empty: run `quarry run evaluate datasets_cfg/tiny.yaml`
SELECT metric, task, model_version, round(value, 4) AS value, round(stderr, 4) AS stderr, n
FROM {view:evaluate}
ORDER BY metric, task, model_version
