-- title: k-means cluster sizes before and after balancing
-- order: 9
-- description: Documents per level-1 (finest) k-means cluster `km_l1`: every embedded document as the hkmeans stage assigned it (before), and the balanced sample of the balance stage counted with its copies `bal_copies` (after). A flat "after" is the point of hierarchical balancing.
-- chart: bar x=km_l1 y=documents color=phase offset=phase
-- empty: run `quarry run curate datasets_cfg/tiny.yaml` (needs the hkmeans and balance stages)
SELECT 'before' AS phase, km_l1::VARCHAR AS km_l1, count(*) AS documents FROM {view:hkmeans} GROUP BY ALL
UNION ALL
SELECT 'after' AS phase, km_l1::VARCHAR AS km_l1, sum(bal_copies)::BIGINT AS documents FROM {view:balance} GROUP BY ALL
ORDER BY phase DESC, documents DESC, km_l1
