-- title: PII and languages per domain
-- order: 16
-- description: Per domain and detected language (the language_id stage's, the top four per domain, the rest as `(other)`): documents, `lang_score` averaged, and the pii stage's replacements (or flags) per type in those documents. Each document's PII is counted under its own language (joined by doc_id), so a column sums to the pii stage's totals.
-- chart: bar x=domain y=documents color=lang
-- empty: run `quarry run curate datasets_cfg/tiny.yaml` (its recipe has the `pii:` and `language_id:` sections)
WITH docs AS (
    SELECT l.domain, coalesce(l.lang, '(none)') AS lang, l.lang_score,
           p.pii_email, p.pii_ip, p.pii_phone, p.pii_secret
    FROM {view:language_id} l LEFT JOIN {view:pii} p USING (doc_id)
), ranked AS (
    SELECT domain, lang, row_number() OVER (PARTITION BY domain ORDER BY count(*) DESC, lang) AS rank
    FROM docs GROUP BY 1, 2
)
SELECT d.domain, CASE WHEN r.rank <= 4 THEN d.lang ELSE '(other)' END AS lang, count(*) AS documents,
       round(avg(d.lang_score), 3) AS avg_lang_score, sum(d.pii_email)::BIGINT AS emails, sum(d.pii_ip)::BIGINT AS ips,
       sum(d.pii_phone)::BIGINT AS phones, sum(d.pii_secret)::BIGINT AS secrets
FROM docs d JOIN ranked r USING (domain, lang)
GROUP BY ALL
ORDER BY d.domain, documents DESC, lang
