-- title: Lineage graph
-- order: 2
-- description: Which version each version was derived from (edges parent -> child, from the manifests' `parents`); the latest version of each stage is drawn bold.
-- chart: graph source=parent target=child
-- empty: run `quarry run curate datasets_cfg/tiny.yaml`
WITH v AS (
    SELECT ref, stage, num_rows, created_at,
           row_number() OVER (PARTITION BY stage ORDER BY created_at DESC) = 1 AS is_latest
    FROM versions WHERE dataset = '{dataset}'
)
SELECT p.parent, v.ref AS child, v.stage, v.num_rows, v.is_latest
FROM v LEFT JOIN (SELECT ref, unnest(parents) AS parent FROM versions) p USING (ref)
ORDER BY v.created_at
