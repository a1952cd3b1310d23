-- title: Quality signal histograms per domain
-- order: 7
-- description: 20-bin histograms of four RedPajama-V2 signals per domain over every document the quality_signals stage scored (before any filter), so domains the filters drop entirely still show; values above the 99th percentile go in the last bin.
-- chart: bar x=bin y=documents color=domain facet=signal
-- empty: run `quarry run curate datasets_cfg/tiny.yaml` (needs the quality_signals stage)
WITH s AS (
    UNPIVOT (
        SELECT domain, rps_doc_word_count::DOUBLE AS word_count, rps_doc_mean_word_length::DOUBLE AS mean_word_length,
               rps_doc_frac_unique_words::DOUBLE AS frac_unique_words,
               rps_doc_stop_word_fraction::DOUBLE AS stop_word_fraction
        FROM {view:quality_signals}
    ) ON word_count, mean_word_length, frac_unique_words, stop_word_fraction INTO NAME signal VALUE value
), r AS (
    SELECT signal, min(value) AS lo, quantile_cont(value, 0.99) AS hi FROM s GROUP BY signal
)
SELECT s.signal, s.domain,
       round(r.lo + (r.hi - r.lo) / 20 * least(greatest(floor((s.value - r.lo) / nullif(r.hi - r.lo, 0) * 20), 0), 19), 4)
           AS bin,
       count(*) AS documents
FROM s JOIN r USING (signal)
GROUP BY ALL
ORDER BY signal, domain, bin
