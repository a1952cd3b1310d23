-- title: Quality classifier score per domain
-- order: 7
-- description: Documents per `quality_score` bucket (0.1 wide) and domain: P(reference text) from the recipe's fastText quality classifier (DCLM, Li et al. 2024), trained on its positive vs negative sets; the held-out accuracy and AUC are in the `quality_classifier` version's stats (versions panel). A quality_filter rule on `quality_score` cuts this histogram.
-- chart: bar x=score_bucket:O y=documents color=domain
-- empty: run `quarry run curate datasets_cfg/tiny_subdoc.yaml` (needs the quality_classifier and quality_score stages)
SELECT round(least(floor(quality_score * 10), 9) / 10, 1) AS score_bucket, domain, count(*) AS documents
FROM {view:quality_score}
WHERE quality_score IS NOT NULL
GROUP BY ALL
ORDER BY score_bucket, domain
