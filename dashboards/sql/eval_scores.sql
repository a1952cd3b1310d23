-- title: Evaluation scores
-- order: 12
-- description: Every (task, metric) score of the latest evaluate version, per model version, with its standard error (the error bars: +-1 stderr) and sample count; one chart per metric, each on its own scale (perplexity and accuracy do not share an axis; perplexity on a log scale, so one task's large value does not flatten the others), models side by side; a grey tick on each multiple-choice task marks chance (1 / number of choices, averaged over the task's examples in `evaluate_examples`), the score a model that guesses gets.
-- chart: bar x=task y=value color=model_version offset=model_version facet=metric resolve=x,y,xOffset error=stderr log=perplexity rule=chance
-- empty: run `quarry run evaluate datasets_cfg/tiny.yaml`
SELECT s.metric, s.task, s.model_version, round(s.value, 4) AS value, round(s.stderr, 4) AS stderr, s.n,
       round(c.chance, 4) AS chance
FROM {view:evaluate} s
LEFT JOIN (SELECT task, metric, avg(chance) AS chance FROM {view:evaluate_examples}
           WHERE chance > 0 GROUP BY task, metric) c ON c.task = s.task AND c.metric = s.metric
ORDER BY s.metric, s.task, s.model_version
