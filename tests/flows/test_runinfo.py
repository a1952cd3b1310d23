"""Runs and data link up, in process under a real Prefect API: a flow run is named and tagged after its flow and
dataset, every version it commits records the run and the recipe's hash, and the run carries a `versions` artifact
that lists them with the `quarry sql` line to open each. (tests/flows/test_deploy.py does the same through a deployment.)"""

from __future__ import annotations

import asyncio
import hashlib
from uuid import UUID

import pytest
import yaml

import datasets_cfg
from flows import runinfo
from storage import catalog, datasets
from tests.conftest import shared_path


def _recipe(tmp_path, root=True):
    source = {"path": str(shared_path("domains", "arxiv_abstracts", "arxiv_abstracts.jsonl")), "domain": "arxiv",
              "text_field": "abstract", "limit": 6}  # fmt: skip
    data = {"dataset": "runinfo", "cluster": "serial", "ingest": {"docs_per_shard": 10, "sources": [source]}}
    if root:
        data["storage_root"] = str(tmp_path / "store")
    path = tmp_path / "runinfo.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run_and_artifacts(flow_run_id: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read():
        async with get_client() as client:
            run = await client.read_flow_run(UUID(flow_run_id))
            arts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            )
            return run, {a.key: a for a in arts}

    return asyncio.run(read())


def test_a_flow_run_is_named_tagged_recorded_in_its_versions_and_lists_them(tmp_path, prefect_api):
    from flows.ingest import ingest

    recipe = _recipe(tmp_path)
    ref = datasets.ref_from_string(str(tmp_path / "store"), ingest(str(recipe)))
    run = datasets.read_manifest(ref)["run"]
    assert run["flow"] == "ingest" and run["flow_run_name"].startswith("ingest-runinfo-")
    assert run["recipe"] == str(recipe) and run["recipe_hash"] == hashlib.sha256(recipe.read_bytes()).hexdigest()
    assert run["profile"] == "serial" and "run_url" not in run  # no link to an API that stopped with the run
    quarantine = datasets.read_manifest(ref.sibling("ingest_quarantine"))["run"]
    assert quarantine["flow_run_id"] == run["flow_run_id"]

    flow_run, artifacts = _run_and_artifacts(run["flow_run_id"])
    assert flow_run.name == run["flow_run_name"]
    assert {"flow:ingest", "dataset:runinfo"} <= set(flow_run.tags)
    table = artifacts[runinfo.ARTIFACT_KEY].data
    assert f"`{ref}` | 6 |" in table and f'"runinfo__ingest@{ref.version}"' in table and "quarry sql" in table

    con = catalog.connect(str(tmp_path / "store"))
    assert con.execute("select distinct flow_run_id from versions").fetchall() == [(run["flow_run_id"],)]


def test_storage_root_and_profile_parameters_move_a_run_and_are_checked_first(tmp_path, prefect_api):
    from flows.ingest import ingest

    recipe = _recipe(tmp_path, root=False)
    other = tmp_path / "elsewhere"
    ref = ingest(str(recipe), storage_root=str(other), profile="serial")
    assert datasets.is_committed(datasets.ref_from_string(str(other), ref))
    with pytest.raises(datasets_cfg.RecipeError, match="no cluster profile 'nope'"):
        runinfo.validate_params({"recipe": str(recipe), "profile": "nope"})
    with pytest.raises(datasets_cfg.RecipeError, match="recipe not found"):
        runinfo.validate_params({"recipe": str(tmp_path / "missing.yaml")})
    with pytest.raises(datasets_cfg.RecipeError, match="cannot also run under"):
        runinfo.validate_params({"recipe": str(_recipe(tmp_path)), "storage_root": str(other)})


def test_deployment_parameters_are_typed_and_described_for_the_ui_form():
    from prefect.utilities.callables import parameter_schema

    from flows.curate import curate

    props = parameter_schema(curate).model_dump()["properties"]
    assert set(props) == {"recipe", "profile", "storage_root"}
    assert props["recipe"]["default"] == "datasets_cfg/tiny.yaml" and props["recipe"]["pattern"]
    assert all(p["description"] for p in props.values())
