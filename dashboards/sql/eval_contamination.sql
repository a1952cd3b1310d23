-- title: Eval contamination
-- order: 15
-- description: Per eval task, how many of its items share a 13-gram with the documents the scored model was trained on (GPT-3's "dirty" items), from the latest eval_contamination version; `too_short` items have fewer words than n and cannot be found. The decontaminate stage's drops (`decontam_<task>`) are steps of the filter funnel.
-- chart: bar x=task y=contaminated color=model_version
-- none: no contamination found: none of the eval items shares a 13-gram with the documents the model was trained on (the table has the counts)
-- empty: run `quarry run evaluate datasets_cfg/tiny.yaml` (the evaluate flow writes it next to the scores)
SELECT task, model_version, items, contaminated, round(fraction, 6) AS fraction, too_short
FROM {view:eval_contamination}
ORDER BY contaminated DESC, task, model_version
