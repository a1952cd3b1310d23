-- title: Watched files
-- order: 14
-- description: Files the nightly incremental ingest took from each watched prefix, and the ingest version each went into.
-- chart: table
-- empty: run `quarry run watch datasets_cfg/tiny.yaml` (or `quarry trigger watch/tiny`, the nightly deployment)
SELECT prefix, regexp_extract(file, '[^/]+$') AS file, round(size / 1e6, 3) AS mb, batch, taken_at
FROM {view:watch_state}
ORDER BY taken_at DESC, file
