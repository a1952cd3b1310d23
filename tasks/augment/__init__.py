"""Thinking-augmented pre-training (TPT): prompts, the teacher engines, generation with reuse."""
