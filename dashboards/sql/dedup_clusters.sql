-- title: Fuzzy-dedup cluster sizes
-- order: 8
-- description: How many MinHash-LSH duplicate clusters have each size, and how many documents they hold (size 1 = no near-duplicate), in the minhash_dedup stage.
-- chart: bar x=cluster_size:O y=clusters
-- empty: run `quarry run curate datasets_cfg/tiny.yaml` (needs the minhash_dedup stage)
SELECT mh_cluster_size AS cluster_size, count(DISTINCT mh_cluster_id) AS clusters, count(*) AS documents
FROM {view:minhash_dedup}
GROUP BY ALL
ORDER BY cluster_size
