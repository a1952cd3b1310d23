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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from tasks import registry

RECIPES_DIR = Path(__file__).resolve().parent


class RecipeError(ValueError):
    """A recipe that does not validate; the message names the file and the offending key."""


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


class _RecipeBase(BaseModel):
    """One dataset recipe. Stage sections that are absent are skipped by the flows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    storage_root: str | None = None  # default: $QUARRY_ROOT, else ./data under the working directory
    cluster: str = "local"  # a profile in ray_cluster/profiles
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


# Every recipe section is a registry stage's params (tasks/registry.py): `ingest` is required, the rest optional.
_SECTIONS: dict[str, Any] = {
    name: ((params, ...) if name == "ingest" else (params | None, None))
    for name, params in registry.sections().items()
    if params is not None
}
RunConfig = create_model("RunConfig", __base__=_RecipeBase, **_SECTIONS)
RunConfig.__doc__ = _RecipeBase.__doc__


# not heldout: every variant must be evaluated on the same never-trained-on documents
_SKIPPABLE = {*registry.CURATION, "embed", "hkmeans", "semdedup", "balance"}


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
