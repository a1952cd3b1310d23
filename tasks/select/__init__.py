"""Row selections: held-out split by doc id, the kept documents, the sampled (curated) documents."""
