-- title: TPT generation stats
-- order: 10
-- description: Thinking-augmented documents per domain in the augment stage: how many, from how many sources, and how long.
-- chart: bar x=domain y=generated
-- empty: run `quarry run augment datasets_cfg/tiny.yaml`
SELECT domain, count(*) AS generated, count(DISTINCT aug_source_id) AS sources,
       round(avg(length(text))) AS avg_chars, max(length(text)) AS max_chars
FROM {view:augment}
GROUP BY ALL
ORDER BY generated DESC
