-- title: Filter funnel and drop reasons
-- order: 6
-- description: Documents kept and dropped, by the first failing rule (`drop_reason`), in the latest stage that carries a drop reason (quality filter, then exact and fuzzy dedup fold into it).
-- chart: bar x=reason y=documents
-- empty: run `quarry run curate datasets_cfg/tiny.yaml` (needs the quality_filter stage)
WITH r AS (SELECT coalesce(drop_reason, 'kept') AS reason, count(*) AS documents FROM {last:drop_reason} GROUP BY 1)
SELECT reason, documents, round(100.0 * documents / sum(documents) OVER (), 2) AS pct
FROM r
ORDER BY reason <> 'kept', documents DESC, reason
