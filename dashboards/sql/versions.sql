-- title: Dataset versions
-- order: 1
-- description: Every committed version of the dataset: stage, rows, files, parents and when it was made (the catalog's `versions` table).
-- chart: table
-- empty: run `quarry run ingest datasets_cfg/tiny.yaml`
SELECT stage, version, num_rows, num_files, created_at, parents, git_commit
FROM versions
WHERE dataset = '{dataset}'
ORDER BY created_at DESC
