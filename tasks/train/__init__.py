"""Tokenize and pack, the Llama model, training on Ray."""
