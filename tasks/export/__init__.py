"""Tokenized exports: curated documents -> the formats other trainers read (Megatron, nanotron/datatrove, MDS,
Hugging Face Parquet), with mixture blends and a dataset card generated from the manifests."""
