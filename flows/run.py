"""The one Prefect task every flow uses: run a registry stage through the executor, publish its artifacts.

    ref = stage("quality_signals", [docs], cfg.quality_signals, profile)
    ref = section("exact_dedup", docs, cfg.exact_dedup, profile)     # hash -> group -> mark, one task each
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext, TaskRunContext

import datasets_cfg
from ray_cluster import executor, runtime
from storage import datasets, leases, pointers
from storage.datasets import DatasetRef
from tasks import registry


def load(recipe: str) -> tuple[datasets_cfg.RunConfig, runtime.Profile]:
    """The validated recipe and its cluster profile; a profile naming an unknown stage is an error."""
    cfg = datasets_cfg.load(recipe)
    return cfg, profile_for(cfg.cluster)


def profile_for(name: str) -> runtime.Profile:
    profile = runtime.load_profile(name)
    registry.check_resource_keys(profile.stages, f"cluster profile {profile.name!r}")
    return profile


@task(retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE, task_run_name="{name}")
def stage(name: str, inputs: list[DatasetRef | None], params: Any, profile: runtime.Profile,
          root: str | None = None, dataset: str | None = None, fail_from_shard: int | None = None) -> DatasetRef:
    """One registry stage: skipped when committed, resumed when partial; its artifacts go to the flow run."""
    runtime.check_stop()  # a stop requested meanwhile (and perhaps swallowed by the engine) starts no new stage
    spec = registry.stage(name)
    leases.lease_inputs(inputs)  # before the read: gc keeps what a live run reads
    ref = executor.run(spec, inputs, params, profile, root=root, dataset=dataset, fail_from_shard=fail_from_shard)
    pointers.staged(ref, spec.outputs)  # the views (and `latest`) now show what this run committed or reused
    if spec.artifacts is not None:
        for key, rows, description in spec.artifacts(datasets.read_manifest(ref)):
            publish_table(artifact_key(key, name), rows, description)
    return ref


def artifact_key(key: str, stage_name: str) -> str:
    """One artifact key per stage: the funnel every filter stage reports is ``filter-funnel-pii`` etc., not four
    versions of one ``filter-funnel`` (Prefect keys are lowercase letters, digits and dashes)."""
    slug = stage_name.replace("_", "-")
    return key if key.startswith(slug) else f"{key}-{slug}"


def section(name: str, src: DatasetRef, params: Any, profile: runtime.Profile) -> DatasetRef:
    """A recipe section's steps in order, each fed by the outputs it names (``src``: the section's input)."""
    return executor.run_chain(registry.section_steps(name), src, params, profile,
                              runner=lambda step, inputs, p, prof: stage(step.name, inputs, p, prof))


def publish_table(key: str, rows: list[dict], description: str) -> None:
    """A Prefect table artifact inside a flow or task run; nothing in plain Python (no API server needed)."""
    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return
    try:
        create_table_artifact(key=key, table=rows, description=description)
    except Exception:  # artifacts are a courtesy; the data is committed already
        pass
