-- title: PII and languages per domain
-- order: 16
-- description: Per domain: documents, the pii stage's replacements (or flags) per type, and the language_id stage's languages (documents per detected language, the top five; `lang_score` averaged).
-- chart: bar x=domain y=documents color=lang
-- empty: run `quarry run curate` on a recipe with `pii:` and `language_id:` sections
WITH p AS (
    SELECT domain, count(*) AS pii_docs, sum(pii_email) AS emails, sum(pii_ip) AS ips, sum(pii_phone) AS phones,
           sum(pii_secret) AS secrets
    FROM {view:pii} GROUP BY 1
), l AS (
    SELECT domain, coalesce(lang, '(none)') AS lang, count(*) AS documents, round(avg(lang_score), 3) AS avg_lang_score,
           row_number() OVER (PARTITION BY domain ORDER BY count(*) DESC, coalesce(lang, '(none)')) AS rank
    FROM {view:language_id} GROUP BY 1, 2
)
SELECT l.domain, l.lang, l.documents, l.avg_lang_score, p.emails, p.ips, p.phones, p.secrets
FROM l LEFT JOIN p USING (domain)
WHERE l.rank <= 5
ORDER BY l.domain, l.documents DESC, l.lang
