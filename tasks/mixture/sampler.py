"""Mixtures to try: Dirichlet samples around the natural token distribution, each within the data's availability.

RegMix (Liu et al. 2024, arXiv 2407.01492, sec. 3) samples proxy mixtures from a Dirichlet centred on the natural
token distribution, so the search explores near what the data offers. Here alpha_i = concentration * K * p_i
(K components, p the natural shares): concentration 1 spreads like a flat Dirichlet over K components, larger
values stay nearer p. Availability: a component of t_i tokens may supply at most max_epochs * t_i of the
target_tokens budget (weight cap_i = max_epochs * t_i / target_tokens), since Muennighoff et al. 2023 ("Scaling
Data-Constrained Language Models", arXiv 2305.16264) find up to ~4 epochs of repeated data nearly as good as fresh
data and returns vanishing beyond; a sample above any cap is rejected and redrawn.
"""

from __future__ import annotations

import numpy as np


def natural(tokens: dict[str, int]) -> dict[str, float]:
    """Each component's share of the tokens, in sorted component order."""
    total = sum(tokens.values())
    if total <= 0:
        raise ValueError("mixture: the components have no tokens")
    return {c: tokens[c] / total for c in sorted(tokens)}


def caps(tokens: dict[str, int], target_tokens: int, max_epochs: float) -> dict[str, float]:
    """The largest weight each component can take: max_epochs passes over its tokens, as a share of the budget."""
    return {c: min(1.0, max_epochs * tokens[c] / target_tokens) for c in sorted(tokens)}


def check_feasible(tokens: dict[str, int], target_tokens: int, max_epochs: float) -> None:
    """Every mixture sums to 1, so the caps must reach 1 together: else no mixture exists at this budget."""
    if sum(caps(tokens, target_tokens, max_epochs).values()) < 1.0 - 1e-9:
        raise ValueError(f"mixture: target_tokens {target_tokens} exceeds max_epochs {max_epochs} x the "
                         f"{sum(tokens.values())} tokens available: lower target_tokens or raise max_epochs")


def sample(tokens: dict[str, int], n: int, *, concentration: float, target_tokens: int, max_epochs: float,
           seed: int, max_rounds: int = 200) -> np.ndarray:
    """n mixtures (rows, sorted component order) from Dirichlet(concentration * K * p), each within the caps."""
    check_feasible(tokens, target_tokens, max_epochs)
    p = np.array(list(natural(tokens).values()))
    cap = np.array(list(caps(tokens, target_tokens, max_epochs).values()))
    alpha = np.maximum(concentration * len(p) * p, 1e-3)  # a zero-token component would make Dirichlet undefined
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    have = 0
    for _ in range(max_rounds):
        draw = rng.dirichlet(alpha, size=max(64, 2 * (n - have)))
        ok = draw[(draw <= cap + 1e-12).all(axis=1)]
        out.append(ok)
        have += len(ok)
        if have >= n:
            return np.concatenate(out)[:n]
    raise ValueError(f"mixture: only {have} of {n} Dirichlet samples respect the availability caps "
                     f"{dict(zip(sorted(tokens), cap.round(4).tolist(), strict=True))} after {max_rounds} rounds: "
                     "raise max_epochs or the concentration, or lower target_tokens")


def project(weights: dict[str, float], cap: dict[str, float]) -> dict[str, float]:
    """The mixture nearest ``weights`` in shape within the caps: clip at each cap and hand the excess to the
    uncapped components in proportion (water-filling); used for the uniform arm of the validation."""
    w = np.array([weights[c] for c in sorted(cap)], dtype=float)
    w = w / w.sum()
    c = np.array([cap[k] for k in sorted(cap)])
    for _ in range(len(w) + 1):
        over = w > c
        if not over.any():
            break
        excess = float((w[over] - c[over]).sum())
        w[over] = c[over]
        free = w < c - 1e-12
        if not free.any():
            raise ValueError("mixture: the caps cannot hold a mixture")
        w[free] += excess * w[free] / w[free].sum()
    return dict(zip(sorted(cap), w.tolist(), strict=True))
