"""The recipe's ``mixture`` section (flows/mixture.py) and the plans the flow hands to the mixture stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tasks.evaluate.compare import DIRECTION
from tasks.train.config import MODEL_PRESETS

ARMS = ("optimum", "natural", "uniform", "balanced")


@dataclass(frozen=True, kw_only=True, slots=True)
class Target:
    """One evaluation row to optimise: ``{dataset}__evaluate``'s task and metric (heldout/<domain> bits_per_byte,
    or a harness task's acc); several targets form a weighted objective (accuracies enter negated)."""

    task: str
    metric: str = "bits_per_byte"
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.metric not in DIRECTION:
            raise ValueError(f"target {self.task!r}: metric {self.metric!r} has no direction; known: {sorted(DIRECTION)}")


@dataclass(frozen=True, kw_only=True, slots=True)
class MixtureParams:
    """RegMix-style search (Liu et al. 2024): n_mixtures proxies, a regression, the simulated optimum, validation."""

    name: str  # the tables are {name}__mixture, {name}__mixture_weights, {name}__mixture_fit, {name}__mixture_validation
    components: str = "domain"  # the pack stage's mixture_by: "domain", or "km_l1" (top hkmeans level; see README)
    targets: tuple[Target, ...] = ()
    n_mixtures: int = 16  # RegMix trains 512 proxies; the fit needs >= 4 for its cross-validation
    concentration: float = 1.0  # Dirichlet alpha = concentration * K * natural share (tasks/mixture/sampler.py)
    max_epochs: float = 4.0  # availability: at most 4 passes over a component (Muennighoff et al. 2023)
    target_tokens: int = 20_000  # tokens each proxy is packed to
    model_size: str = "nano"  # proxy size (tasks/train/config.py MODEL_PRESETS)
    max_steps: int | None = None  # proxy steps; None: the train section's
    seed: int = 0  # the sampler's, the fit's and the simulation's seed; proxy i trains with seed seed + i
    folds: int = 5  # cross-validation folds for the held-out rho
    optimum_model: str = "best"  # "lightgbm", "linear", or "best" (the higher held-out rho)
    simulations: int = 100_000  # simulated mixtures the regression ranks (RegMix: 1M)
    top_k: int = 100  # averaged into the optimum (RegMix: 100)
    validate: bool = True
    arms: tuple[str, ...] = ARMS
    validation_seeds: tuple[int, ...] = (0, 1, 2)  # >= 3 so the seed bootstrap is not degenerate (compare.py)
    validation_model_size: str | None = None  # a larger scale for the validation (None: the proxy's)
    validation_tokens: int | None = None  # and its token budget (None: target_tokens)
    validation_max_steps: int | None = None
    bootstrap_iters: int = 1000
    alpha: float = 0.05
    blend_prefix: str = "{dataset}_{component}_text_document"  # Megatron data prefix per component

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("mixture needs at least one target (task, metric, weight)")
        if self.n_mixtures < 4:
            raise ValueError(f"mixture.n_mixtures must be >= 4 (cross-validated fit), got {self.n_mixtures}")
        if not self.concentration > 0 or not self.max_epochs > 0 or self.target_tokens <= 0:
            raise ValueError("mixture.concentration, max_epochs and target_tokens must be > 0")
        for s in (self.model_size, self.validation_model_size):
            if s is not None and s not in MODEL_PRESETS:
                raise ValueError(f"mixture: unknown model size {s!r}; known: {sorted(MODEL_PRESETS)}")
        if self.optimum_model not in ("best", "lightgbm", "linear"):
            raise ValueError(f"mixture.optimum_model must be best, lightgbm or linear, got {self.optimum_model!r}")
        bad = [a for a in self.arms if a not in ARMS]
        if bad or "natural" not in self.arms:
            raise ValueError(f"mixture.arms {list(self.arms)}: known {list(ARMS)}, and natural (the baseline) is needed")
        if self.components != "domain" and not self.components.startswith("km_l"):
            raise ValueError(f"mixture.components must be 'domain' or a k-means level column km_l<k>, got {self.components!r}")


def objective(values: dict[tuple[str, str], float], targets: tuple[Target, ...]) -> float:
    """The weighted target, lower is better: bits/byte as is, accuracies negated."""
    total = 0.0
    for t in targets:
        if (t.task, t.metric) not in values:
            raise KeyError(f"mixture target {t.task}/{t.metric} is not among the evaluate rows "
                           f"{sorted(values)[:12]}")
        total += t.weight * (-1.0 if DIRECTION[t.metric] else 1.0) * values[(t.task, t.metric)]
    return total


@dataclass(frozen=True)
class Run:
    """One proxy (or validation) training run: its arm, seed and mixture (component -> weight)."""

    arm: str
    seed: int
    weights: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class FitPlan:
    config: Any  # MixtureParams
    tokens: tuple[tuple[str, int], ...]  # component -> tokens available
    runs: tuple[Run, ...]  # the search proxies, in input order


@dataclass(frozen=True)
class SelectPlan:
    config: Any
    dataset: str
    weights: tuple[tuple[str, float], ...]
    target_tokens: int


@dataclass(frozen=True)
class ValidatePlan:
    config: Any
    runs: tuple[Run, ...]  # validation runs, in input order
    natural: tuple[tuple[str, float], ...]
    model_size: str = field(default="")
