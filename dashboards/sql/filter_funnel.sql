-- title: Filter funnel, stage by stage and per domain
-- order: 6
-- description: Documents left after each step, in total and per domain: records read -> quarantine -> held out -> each drop reason, under the stage that dropped the document (`drop_stage`, in curation order: line dedup -> the quality rules, biggest cut first -> pii flags (`pii_<type>`) -> eval-set overlap (`decontam_<task>`) -> exact dedup -> fuzzy dedup -> sentence-span dedup) -> kept -> curated. `removed` is what the step took out; a step reads the stage it names. Filters and dedup only flag rows, so their reasons and stages all come from the last of sentence_dedup, minhash_dedup, exact_dedup, quality_filter that ran (language rules are quality_filter rules: `lang_en`).
-- chart: bar x=step y=documents color=domain melt=domain:documents keep=step_no,step,stage,removed,remaining
-- empty: run `quarry run curate datasets_cfg/tiny.yaml` (needs ingest, a filter or dedup stage, and kept)
PIVOT (
    WITH src AS (  -- the domain of each input file, for the quarantined records (they have no domain of their own)
        SELECT source, any_value(domain) AS domain FROM {view:ingest} GROUP BY 1
    ), quarantined AS (
        SELECT coalesce(s.domain, '(unlabelled)') AS domain FROM {view:ingest_quarantine} q LEFT JOIN src s USING (source)
    ), dropped AS (
        SELECT drop_stage AS stage, drop_reason AS reason, domain, count(*) AS n  -- the stage that dropped it
        FROM {view:sentence_dedup|minhash_dedup|exact_dedup|quality_filter}
        WHERE drop_reason IS NOT NULL
        GROUP BY ALL
    ), reasons AS (  -- stages in curation order (rules, then exact, then fuzzy duplicates); biggest cut first
        SELECT reason, stage,
               row_number() OVER (ORDER BY CASE stage WHEN 'line_dedup' THEN -1 WHEN 'quality_filter' THEN 0
                                                      WHEN 'pii' THEN 0.3 WHEN 'decontaminate' THEN 0.6
                                                      WHEN 'exact_dedup' THEN 1 WHEN 'minhash_dedup' THEN 2
                                                      WHEN 'sentence_dedup' THEN 3 ELSE 4 END,
                                           sum(n) DESC, reason) AS k
        FROM dropped GROUP BY reason, stage
    ), steps AS (  -- (ord, step, stage): a dedup stage that ran but removed nothing still gets its step
        SELECT 0.0 AS ord, 'read' AS step, 'ingest' AS stage
        UNION ALL SELECT 1, 'quarantine', 'ingest_quarantine'
        UNION ALL SELECT 2, 'held out', 'heldout' WHERE {has:heldout}
        UNION ALL SELECT 10 + k, reason, stage FROM reasons
        UNION ALL SELECT 10 + coalesce((SELECT max(k) FROM reasons WHERE stage IN ('line_dedup', 'quality_filter',
                                                                                   'pii', 'decontaminate')), 0) + 0.5,
                         'exact dedup: none', 'exact_dedup'
                  WHERE {has:exact_dedup} AND NOT EXISTS (SELECT 1 FROM reasons WHERE stage = 'exact_dedup')
        UNION ALL SELECT 10 + coalesce((SELECT max(k) FROM reasons WHERE stage NOT IN ('minhash_dedup', 'sentence_dedup')), 0) + 0.7,
                         'fuzzy dedup: none', 'minhash_dedup'
                  WHERE {has:minhash_dedup} AND NOT EXISTS (SELECT 1 FROM reasons WHERE stage = 'minhash_dedup')
        UNION ALL SELECT 1000, 'kept', 'kept'
        UNION ALL SELECT 1001, 'curated', 'curated' WHERE {has:curated}
    ), counted AS (  -- steps that count a stage's rows directly
        SELECT 0.0 AS ord, domain, count(*) AS n
        FROM (SELECT domain FROM {view:ingest} UNION ALL SELECT domain FROM quarantined) GROUP BY ALL
        UNION ALL SELECT 1000, domain, count(*) FROM {view:kept} GROUP BY ALL
        UNION ALL SELECT 1001, domain, count(*) FROM {view?:curated} GROUP BY ALL
    ), removals AS (  -- steps that take documents out
        SELECT 1.0 AS ord, domain, count(*) AS n FROM quarantined GROUP BY ALL
        UNION ALL SELECT 2, domain, count(*) FROM {view?:heldout} GROUP BY ALL
        UNION ALL SELECT 10 + r.k, d.domain, d.n FROM dropped d JOIN reasons r USING (reason, stage)
    ), grid AS (
        -- a counted step (read, kept, curated) with no row for a domain counted zero documents of it
        SELECT s.ord, s.step, s.stage, d.domain, CASE WHEN s.ord IN (0, 1000, 1001) THEN coalesce(c.n, 0) END AS counted,
               coalesce(r.n, 0) AS removed_here
        FROM steps s CROSS JOIN (SELECT DISTINCT domain FROM counted) d
        LEFT JOIN counted c ON c.ord = s.ord AND c.domain = d.domain
        LEFT JOIN removals r ON r.ord = s.ord AND r.domain = d.domain
    ), long AS (
        SELECT ord, step, stage, domain,
               coalesce(counted, max(counted) FILTER (WHERE ord = 0) OVER (PARTITION BY domain)
                                 - sum(removed_here) OVER (PARTITION BY domain ORDER BY ord)) AS remaining
        FROM grid
    ), per_step AS (
        SELECT ord, step, stage, domain, remaining,
               lag(remaining) OVER (PARTITION BY domain ORDER BY ord) - remaining AS removed
        FROM long
    ), totals AS (
        SELECT ord, sum(removed) AS removed, sum(remaining) AS remaining FROM per_step GROUP BY ord
    )
    SELECT (dense_rank() OVER (ORDER BY p.ord) - 1)::INT AS step_no, p.step, p.stage, t.removed, t.remaining,
           p.domain, p.remaining AS domain_remaining
    FROM per_step p JOIN totals t USING (ord)
) ON domain USING first(domain_remaining)
GROUP BY step_no, step, stage, removed, remaining
ORDER BY step_no
