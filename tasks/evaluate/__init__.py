"""Bits/byte and lm-eval tasks, comparisons with uncertainty, experiment matrices and scaling-law fits."""
