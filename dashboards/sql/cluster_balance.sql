-- title: k-means cluster sizes before and after balancing
-- order: 9
-- description: Documents per top-level k-means cluster (`km_l1`) in the first stage that assigned clusters (before) and in the latest one (after balanced sampling). A flat "after" is the point of hierarchical balancing.
-- chart: bar x=km_l1 y=documents color=phase offset=phase
-- empty: run `quarry run curate datasets_cfg/tiny.yaml` (needs the k-means balancing stages)
SELECT 'before' AS phase, km_l1::VARCHAR AS km_l1, count(*) AS documents FROM {first:km_l1} GROUP BY ALL
UNION ALL
SELECT 'after' AS phase, km_l1::VARCHAR AS km_l1, count(*) AS documents FROM {last:km_l1} GROUP BY ALL
ORDER BY phase DESC, documents DESC
