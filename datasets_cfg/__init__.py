"""WHAT to build: YAML recipes validated into a ``RunConfig`` composed from the stages' own ``*Params``.

    from datasets_cfg import load
    cfg = load("datasets_cfg/tiny.yaml")

A typo or a wrong type is an error that names the file and the key (``extra="forbid"``). Each stage receives only
its own params, never the RunConfig (torchtitan's lesson). Resources and addresses live in ray_cluster profiles.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tasks.augment import AugmentParams
from tasks.datatrove_signals import DatatroveSignalsParams
from tasks.embed import EmbedParams
from tasks.evaluate import EvaluateParams
from tasks.exact_dedup import ExactDedupParams
from tasks.ingest import IngestSource
from tasks.kmeans_balance import BalanceParams, KMeansParams
from tasks.minhash_dedup import FuzzyDedupParams, MinhashParams
from tasks.quality_filter import QualityFilterParams
from tasks.quality_signals import QualitySignalsParams
from tasks.select import SplitParams
from tasks.semdedup import SemDeDupParams
from tasks.tokenize import TokenizeParams
from tasks.train import TrainParams

RECIPES_DIR = Path(__file__).resolve().parent


class RecipeError(ValueError):
    """A recipe that does not validate; the message names the file and the offending key."""


class IngestConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: list[IngestSource] = Field(min_length=1)
    docs_per_shard: int = Field(default=50_000, gt=0)  # a large input file is split into shards of this many docs


class ExperimentVariant(BaseModel):
    """One data recipe of an experiment: the base recipe with some stages switched off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    skip: list[str] = Field(default_factory=list)  # stage sections of the recipe to leave out (e.g. quality_filter)


class ExperimentConfig(BaseModel):
    """A matrix of data recipes x model sizes x seeds, each trained on the same token budget and evaluated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    variants: dict[str, ExperimentVariant] = Field(min_length=1)
    model_sizes: list[str] = Field(default_factory=lambda: ["tiny"])  # TrainParams presets (tasks.train.MODEL_PRESETS)
    seeds: list[int] = Field(default_factory=lambda: [0])
    target_tokens: int = Field(gt=0)  # every cell trains on exactly this many tokens (resampled per variant)


class RunConfig(BaseModel):
    """One dataset recipe. Stage sections that are absent are skipped by the flows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    storage_root: str | None = None  # default: $QUARRY_ROOT, else ./data under the working directory
    cluster: str = "local"  # a profile in ray_cluster/profiles
    ingest: IngestConfig
    heldout: SplitParams | None = None  # documents held out by doc id before curation, for per-domain bits/byte
    # curation stages, in flow order; a missing section skips the stage
    quality_signals: QualitySignalsParams | None = None
    minhash_signatures: MinhashParams | None = None
    datatrove_signals: DatatroveSignalsParams | None = None
    quality_filter: QualityFilterParams | None = None
    exact_dedup: ExactDedupParams | None = None
    minhash_dedup: FuzzyDedupParams | None = None
    # embedding-space curation (Vo et al. 2024): needs embed + hkmeans; semdedup and balance are optional
    embed: EmbedParams | None = None
    hkmeans: KMeansParams | None = None
    semdedup: SemDeDupParams | None = None
    balance: BalanceParams | None = None
    augment: AugmentParams | None = None  # TPT: run by the augment flow on the curated documents
    # training and evaluation
    tokenize: TokenizeParams | None = None
    train: TrainParams | None = None
    evaluate: EvaluateParams | None = None
    experiment: ExperimentConfig | None = None

    def variant(self, skip: list[str]) -> RunConfig:
        """This recipe with the named stage sections removed (an experiment's data variant)."""
        unknown = [s for s in skip if s not in _SKIPPABLE]
        if unknown:
            raise RecipeError(f"cannot skip {unknown}: skippable stages are {sorted(_SKIPPABLE)}")
        return self.model_copy(update={s: None for s in skip})

    @property
    def root(self) -> str:
        return self.storage_root or os.environ.get("QUARRY_ROOT") or str(Path.cwd() / "data")


_SKIPPABLE = {  # not heldout: every variant must be evaluated on the same never-trained-on documents
    "quality_signals", "minhash_signatures", "datatrove_signals", "quality_filter", "exact_dedup",
    "minhash_dedup", "embed", "hkmeans", "semdedup", "balance",
}


def _resolve_paths(data: dict, base: Path) -> dict:
    """Source paths and storage roots relative to the recipe file; ${VARS} expanded."""
    ingest = data.get("ingest")
    if isinstance(ingest, dict) and isinstance(ingest.get("sources"), list):
        for src in ingest["sources"]:
            if isinstance(src, dict) and isinstance(src.get("path"), str):
                src["path"] = _resolve(src["path"], base)
    evaluate = data.get("evaluate")
    if isinstance(evaluate, dict) and isinstance(evaluate.get("eval_dir"), str):
        evaluate["eval_dir"] = _resolve(evaluate["eval_dir"], base)
    if isinstance(data.get("storage_root"), str):
        data["storage_root"] = _resolve(data["storage_root"], base)
    return data


def _resolve(path: str, base: Path) -> str:
    path = os.path.expandvars(path)
    if "://" in path or os.path.isabs(path):
        return path
    return str((base / path).resolve())


def _format_error(path: Path, err: ValidationError) -> str:
    lines = [f"invalid recipe {path}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        kind = e["type"]
        if kind in ("extra_forbidden", "unexpected_keyword_argument"):
            lines.append(f"  unknown key {loc!r}")
        else:
            lines.append(f"  {loc}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def validate(data: dict, path: str | Path = "<recipe>") -> RunConfig:
    path = Path(path)
    if not isinstance(data, dict):
        raise RecipeError(f"invalid recipe {path}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(_resolve_paths(dict(data), path.resolve().parent))
    except ValidationError as e:
        raise RecipeError(_format_error(path, e)) from None


def load(path: str | Path) -> RunConfig:
    """Read and validate a recipe; relative paths inside it are relative to the recipe file."""
    path = Path(path)
    if not path.exists() and (RECIPES_DIR / path.name).exists():
        path = RECIPES_DIR / path.name
    try:
        data: Any = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"recipe not found: {path}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"invalid YAML in {path}: {e}") from None
    return validate(data, path)


def recipes() -> list[Path]:
    return sorted(RECIPES_DIR.glob("*.yaml"))
