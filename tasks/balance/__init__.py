"""Embeddings, hierarchical k-means, SemDeDup and balanced sampling (Vo et al. 2024)."""
