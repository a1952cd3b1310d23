-- title: Dataset versions
-- order: 1
-- description: Every committed version of the dataset: stage, rows, files, parents, whether it is the current one (its pointer names it: the views read it), when it was made and by which run (the Prefect flow run, linked to its page when the run reported to a Prefect server, and the Ray job); the catalog's `versions` table.
-- chart: table
-- empty: run `quarry run ingest datasets_cfg/tiny.yaml`
SELECT stage, version,
       EXISTS (SELECT 1 FROM pointers p WHERE p.dataset = versions.dataset AND p.stage = versions.stage
               AND p.version = versions.version) AS current,
       num_rows, num_files, created_at, parents, flow_run_name AS run, run_url, deployment,
       ray_job_id, recipe_hash, git_commit
FROM versions
WHERE dataset = '{dataset}'
ORDER BY created_at DESC
