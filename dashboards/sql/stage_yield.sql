-- title: Stage yield
-- order: 3
-- description: Rows in (the stage's main input: its first parent) and rows out of the current version of every stage (the one its pointer names: what the views read). The chart shows documents in and out of the document stages only (a view with a `text` column: one row per document); LSH edges, hashes, cluster tables and training steps are rows of another kind and are listed in the table, not plotted against documents. Side inputs (dedup keepers and clusters, the balance selection) are listed, not counted. Filters keep every row and only flag it, so their yield is 1.0: the funnel below shows what they dropped.
-- chart: bar x=stage y=documents color=phase offset=phase melt=phase:documents keep=stage values=rows_in,rows_out where=document_stage
-- empty: run `quarry run curate datasets_cfg/tiny.yaml`
WITH latest AS (
    SELECT versions.* FROM versions
    JOIN pointers p ON p.dataset = versions.dataset AND p.stage = versions.stage AND p.version = versions.version
    WHERE versions.dataset = '{dataset}' AND NOT versions.stage LIKE '%quarantine'
)
SELECT v.stage, v.version, v.parents[1] AS input, p.num_rows AS rows_in, v.num_rows AS rows_out,
       round(v.num_rows / nullif(p.num_rows, 0), 4) AS yield,
       EXISTS (SELECT 1 FROM duckdb_columns() c WHERE c.table_name = '{dataset}__' || v.stage AND c.column_name = 'text')
           AS document_stage,
       v.parents[2:] AS side_inputs, v.created_at
FROM latest v
LEFT JOIN versions p ON p.ref = v.parents[1]
ORDER BY v.created_at
