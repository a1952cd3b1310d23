-- title: Lineage graph
-- order: 2
-- description: Which version each version was derived from (edges parent -> child, from the manifests' `parents`), drawn top to bottom with one row per depth of the stage; the current version of each stage (the one its pointer names, what the views read) is bold, older ones grey. The table lists the same edges.
-- chart: graph source=parent target=child
-- empty: run `quarry run curate datasets_cfg/tiny.yaml`
WITH v AS (
    SELECT ref, stage, version, num_rows, created_at, parents,
           EXISTS (SELECT 1 FROM pointers p WHERE p.dataset = versions.dataset AND p.stage = versions.stage
                   AND p.version = versions.version) AS is_latest
    FROM versions WHERE dataset = '{dataset}'
)
SELECT v.stage, v.version, v.num_rows, p.parent, v.ref AS child, v.is_latest
FROM v LEFT JOIN (SELECT ref, unnest(parents) AS parent FROM v) p USING (ref)
ORDER BY v.created_at, p.parent
