"""Exact, MinHash-LSH, line and sentence deduplication (hash -> global DuckDB step -> verdict)."""
