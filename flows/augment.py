"""Thinking-augmented data (TPT, Wang et al. 2025): a teacher LLM writes a thinking trajectory for each curated
document; the training text becomes ``document <think> thinking </think>``.

    quarry run augment datasets_cfg/tiny.yaml
    python -m flows.augment datasets_cfg/tiny.yaml

Backends: ``local`` (bundled SmolLM2-135M on CPU), ``openai`` (any OpenAI-compatible endpoint), ``vllm`` (Ray
Data's LLM processor). A re-run reuses every document already augmented with the same (teacher, template, params)
by any earlier augment version of the dataset, keyed on the exact text read (never the doc_id); a killed run
resumes from committed shards.
"""

from __future__ import annotations

import sys

from prefect import flow

import datasets_cfg
from datasets_cfg import sections
from flows import runinfo
from flows.curate import curate_stages
from flows.run import load, stage
from flows.runinfo import DEFAULT_RECIPE, ProfileName, Recipe, StorageRoot
from ray_cluster import runtime


@flow(name="augment", log_prints=True, flow_run_name=runinfo.run_name)
@runinfo.tracked_flow
def augment(recipe: Recipe = DEFAULT_RECIPE, profile: ProfileName = None, storage_root: StorageRoot = None) -> str:
    """Curate (a no-op when done), then augment the curated documents; returns the augment version."""
    cfg, profile = load(recipe)
    sections.check_sections(cfg, recipe)  # a section that would do nothing: refused, or warned about
    if cfg.augment is None:
        raise datasets_cfg.RecipeError(f"recipe {recipe} has no `augment` section")
    with runtime.connected(profile):
        curated, _ = curate_stages(cfg, profile)
        return str(stage("augment", [curated], cfg.augment, profile))


if __name__ == "__main__":
    print(augment(sys.argv[1]))
