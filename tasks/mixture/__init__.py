"""Mixture search with proxy models (RegMix, Liu et al. 2024, arXiv 2407.01492): sample mixtures, train one tiny
model per mixture, regress the target on the weights, simulate the best mixture, validate it (flows/mixture.py)."""
