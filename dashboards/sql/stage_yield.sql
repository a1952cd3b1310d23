-- title: Stage yield
-- order: 3
-- description: Rows in (the parent version's rows) and rows out per stage version, by joining `versions` to its parent. Filters keep every row and only flag it, so their yield is 1.0: the funnel below shows what they dropped.
-- chart: bar x=stage y=rows_out
-- empty: run `quarry run curate datasets_cfg/tiny.yaml`
WITH edges AS (SELECT ref, unnest(parents) AS parent FROM versions WHERE dataset = '{dataset}')
SELECT v.stage, v.version, p.ref AS parent, p.num_rows AS rows_in, v.num_rows AS rows_out,
       round(v.num_rows / nullif(p.num_rows, 0), 4) AS yield, v.created_at
FROM versions v
LEFT JOIN edges e ON e.ref = v.ref
LEFT JOIN versions p ON p.ref = e.parent
WHERE v.dataset = '{dataset}' AND NOT v.stage LIKE '%quarantine'
ORDER BY v.created_at
