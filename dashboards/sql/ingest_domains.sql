-- title: Ingested documents per domain
-- order: 4
-- description: Documents and raw megabytes per domain and input file in the latest ingest version.
-- chart: bar x=domain y=documents color=source
-- empty: run `quarry run ingest datasets_cfg/tiny.yaml`
SELECT domain, regexp_extract(source, '[^/]+$') AS source, count(*) AS documents,
       round(sum(raw_bytes) / 1e6, 3) AS raw_mb, round(avg(length(text))) AS avg_chars
FROM {view:ingest}
GROUP BY ALL
ORDER BY domain, documents DESC
