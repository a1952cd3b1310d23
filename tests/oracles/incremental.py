"""Test oracle of tasks/dedup/incremental.py: the union of the batches deduplicated in one run, first batch wins."""


def union_first_batch_wins(batches: list) -> set[str]:
    """The reference semantics, in memory (the tests' oracle, the benchmark's check): exact then MinHash dedup with
    default params over the union of the batches (doc_id, text, url) in one run, survivor priority (batch, then
    longest, then doc_id); the kept doc_ids."""
    import duckdb
    import pyarrow as pa
    import pyarrow.compute as pc

    from tasks.dedup import exact, minhash, minhash_sql

    parts = []
    for i, t in enumerate(batches):
        t = t.select(["doc_id", "text", "url"])
        prio = pc.subtract(pa.scalar(i * 10**9, pa.int64()), pc.utf8_length(t.column("text")).cast(pa.int64()))
        parts.append(t.append_column("_prio", prio))
    union = pa.concat_tables(parts)
    ep = exact.ExactDedupParams(priority="_prio:asc")
    hashed = exact.exact_dedup_hashes(union, ep)
    hashed = hashed.append_column("__shard", pa.array(["s"] * hashed.num_rows)).append_column(
        "__row", pa.array(range(hashed.num_rows), pa.int64()))
    con = duckdb.connect()
    con.register("h", hashed)
    for stmt in exact.exact_dedup_sql("h", ep):
        con.execute(stmt)
    after_exact = exact.exact_dedup_filter(hashed, ep, keepers=con.sql("SELECT * FROM ed_keepers").to_arrow_table())
    mp = minhash.MinhashDedupParams(priority="_prio:asc")
    signed = minhash.minhash_signatures(after_exact, minhash.MinhashSignaturesParams())
    edges = minhash.minhash_edges(signed, mp)
    con.register("e", edges)
    con.register("d", signed.select(["doc_id", "_prio"]))
    minhash_sql.run_fuzzy_dedup_sql(con, "e", "d", mp)
    out = minhash.minhash_filter(signed, mp, clusters=con.sql("SELECT * FROM mh_clusters").to_arrow_table())
    return set(out.filter(out.column("keep")).column("doc_id").to_pylist())
