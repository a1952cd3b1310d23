-- name: curation funnel
select coalesce(drop_stage, '(kept)') stage, coalesce(drop_reason, '(kept)') reason, count(*) docs from {dataset}__minhash_dedup group by 1, 2 order by 3 desc;
-- name: kept documents per domain
select domain, count(*) docs, sum(raw_bytes) bytes from {dataset}__kept group by 1 order by 1;
-- name: training
select min(step) first_step, max(step) steps, arg_max(loss, step) final_loss, min(loss) min_loss from {dataset}__train;
-- name: evaluation
select task, metric, round(value, 4) value, round(stderr, 4) stderr, n from {dataset}__evaluate order by task;
