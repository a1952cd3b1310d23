-- title: Sub-document dedup: lines and sentence spans removed
-- order: 8
-- description: Per domain, what CCNet-style line dedup (`line_dedup`, before the signals) and C4/datatrove 3-sentence-span dedup (`sentence_dedup`, after document dedup) removed inside documents: documents changed, lines or sentences removed, the mean share of each document's characters removed (`ld_removed_char_fraction`, `sn_removed_char_fraction`), and documents dropped because nothing, or under `min_doc_words` words, was left (`ld_empty_after_dedup`, `sn_too_short_after_dedup`).
-- chart: bar x=domain y=mean_chars_removed_pct color=stage offset=stage
-- empty: run `quarry run curate datasets_cfg/tiny_subdoc.yaml` (needs the line_dedup and sentence_dedup stages)
SELECT 'line_dedup' AS stage, domain, count(*) AS documents,
       count(*) FILTER (WHERE ld_lines_removed > 0) AS documents_changed,
       sum(ld_lines_removed)::BIGINT AS units_removed,
       round(100 * avg(ld_removed_char_fraction), 2) AS mean_chars_removed_pct,
       count(*) FILTER (WHERE drop_reason = 'ld_empty_after_dedup') AS documents_dropped
FROM {view:line_dedup} GROUP BY ALL
UNION ALL
SELECT 'sentence_dedup', domain, count(*), count(*) FILTER (WHERE sn_sentences_removed > 0),
       sum(sn_sentences_removed)::BIGINT, round(100 * avg(sn_removed_char_fraction), 2),
       count(*) FILTER (WHERE drop_reason = 'sn_too_short_after_dedup')
FROM {view:sentence_dedup} GROUP BY ALL
ORDER BY stage, domain
