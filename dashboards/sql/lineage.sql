-- title: Lineage graph
-- order: 2
-- description: Which version each version was derived from (edges parent -> child, from the manifests' `parents`), drawn top to bottom with one row per depth of the stage; the latest version of each stage is bold, older ones grey. The table lists the same edges.
-- chart: graph source=parent target=child
-- empty: run `quarry run curate datasets_cfg/tiny.yaml`
WITH v AS (
    SELECT ref, stage, version, num_rows, created_at, parents,
           row_number() OVER (PARTITION BY stage ORDER BY created_at DESC) = 1 AS is_latest
    FROM versions WHERE dataset = '{dataset}'
)
SELECT v.stage, v.version, v.num_rows, p.parent, v.ref AS child, v.is_latest
FROM v LEFT JOIN (SELECT ref, unnest(parents) AS parent FROM v) p USING (ref)
ORDER BY v.created_at, p.parent
