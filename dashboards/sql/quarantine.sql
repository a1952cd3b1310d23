-- title: Quarantined records
-- order: 5
-- description: Records that could not become documents, by stage and reason (nothing is dropped silently).
-- chart: bar x=reason y=records color=stage
-- empty: run `quarry run ingest` on a recipe whose sources hold an unreadable record; none has been quarantined yet (every record read became a document)
SELECT stage, reason, count(*) AS records, any_value(regexp_extract(source, '[^/]+$')) AS example_source
FROM {view:quarantine}
GROUP BY ALL
ORDER BY records DESC
