"""Curate a dataset: ingest -> RPv2 signals -> MinHash -> SQL filter -> exact + fuzzy dedup -> kept documents
-> embed -> hierarchical k-means -> (SemDeDup) -> balanced sample.

    quarry run curate datasets_cfg/tiny.yaml
    python -m flows.curate datasets_cfg/tiny.yaml

Every line is a stage; a recipe section that is absent skips its stage. Re-running is a no-op; a killed run resumes.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any

from prefect import flow

import datasets_cfg
from datasets_cfg import sections
from flows import run, runinfo
from flows.run import load
from flows.runinfo import DEFAULT_RECIPE, ProfileName, Recipe, StorageRoot
from ray_cluster import runtime
from storage import datasets
from storage.datasets import DatasetRef
from tasks import registry
from tasks.dedup import incremental
from tasks.ingest.stage import IngestParams
from tasks.select.selection import KeptParams, SelectedParams


def curate_stages(cfg: datasets_cfg.RunConfig, profile: runtime.Profile, steps: Any = run, *,
                  batch: DatasetRef | None = None, prior: dict | None = None) -> tuple[DatasetRef, DatasetRef | None]:
    """The stages of a validated recipe, in order; returns (curated version, held-out version or None). ``steps``
    runs them (``stage`` and ``section``): the Prefect tasks of flows/run.py, or flows/plan.py's dry runner.
    ``batch``: one watched ingest batch instead of the recipe's ingest; its dedup sections then match it against
    the indexes in ``prior`` and advance them (tasks/dedup/incremental.py, issue 30)."""
    stage, section = steps.stage, steps.section
    docs = batch or stage("ingest", [], cfg.ingest, profile, root=cfg.root, dataset=cfg.dataset)
    heldout = None
    if cfg.heldout:  # evaluation text leaves before curation, so no stage (or model) ever sees it
        heldout = stage("heldout", [docs], replace(cfg.heldout, side="heldout"), profile)
        docs = stage("train_split", [docs], replace(cfg.heldout, side="train"), profile)
    model = quality_model(cfg, profile, steps)
    for name in registry.CURATION:
        if name == "quality_score" and cfg.quality_score is not None:
            if model is None:  # flows/plan.py refuses such a recipe at load; an experiment variant may skip it
                raise datasets_cfg.RecipeError(f"{cfg.dataset}: quality_score needs a quality_classifier section")
            docs = stage("quality_score", [docs, model], cfg.quality_score, profile)
        elif batch is not None and name in incremental.INCREMENTAL and getattr(cfg, name) is not None:
            docs = incremental.run_section(stage, name, docs, getattr(cfg, name), profile, prior, str(batch))
        elif getattr(cfg, name) is not None:
            docs = section(name, docs, getattr(cfg, name), profile)
    docs = stage("kept", [docs], KeptParams(), profile)
    if cfg.embed and cfg.hkmeans:  # embedding-space curation (Vo et al. 2024); flows/plan.py: what needs what
        emb = stage("embed", [docs], cfg.embed, profile)
        hk = stage("hkmeans", [emb], cfg.hkmeans, profile)
        sd = stage("semdedup", [emb, hk], cfg.semdedup, profile) if cfg.semdedup else None
        if cfg.balance:
            bal = stage("balance", [hk, docs, sd], cfg.balance, profile)
            docs = stage("curated", [docs, bal], SelectedParams(copies_column="bal_copies"), profile)
    if cfg.export is not None and batch is None:  # tokenized files for other trainers (issue 31, tasks/export)
        section("export", docs, cfg.export, profile)
    return docs, heldout


def quality_model(cfg: datasets_cfg.RunConfig, profile: runtime.Profile, steps: Any = run) -> DatasetRef | None:
    """The recipe's quality classifier: its positive and negative sets ingested as datasets of their own
    (``{dataset}_qc_positive`` / ``_qc_negative``), then trained; held-out accuracy and AUC are printed."""
    qc = cfg.quality_classifier
    if qc is None:
        return None
    stage = steps.stage
    sets = [stage("ingest", [], IngestParams(sources=sources, docs_per_shard=qc.docs_per_shard), profile,
                  root=cfg.root, dataset=f"{cfg.dataset}_qc_{role}")
            for role, sources in (("positive", qc.positive), ("negative", qc.negative))]
    model = stage("quality_classifier", sets, qc, profile, dataset=cfg.dataset)
    if getattr(steps, "dry", False):  # a plan: nothing trained
        return model
    stats = datasets.read_manifest(model)["stats"]
    print(f"quality_classifier {model.version[:12]}: held-out accuracy {stats['quality_classifier_heldout_accuracy']}"
          f", AUC {stats['quality_classifier_heldout_auc']}")
    return model


@flow(name="curate", log_prints=True, flow_run_name=runinfo.run_name)
@runinfo.tracked_flow
def curate(recipe: Recipe = DEFAULT_RECIPE, profile: ProfileName = None, storage_root: StorageRoot = None) -> str:
    """Run the recipe's curation stages; returns the final dataset version (dataset/stage/version)."""
    cfg, profile = load(recipe)
    sections.check_sections(cfg, recipe)  # a section that would do nothing: refused, or warned about
    with runtime.connected(profile):
        if datasets.latest(cfg.root, cfg.dataset, "watch_state") is not None:  # a living corpus: batch by batch
            return str(curate_batches(cfg, profile)[-1]["curated"])
        return str(curate_stages(cfg, profile)[0])


def curate_batches(cfg: datasets_cfg.RunConfig, profile: runtime.Profile, steps: Any = run, *,
                   recheck: bool = False) -> list[dict]:
    """Every watched batch in the order it was taken, each against the indexes of those before (issue 30). Batches
    the ``corpus`` table lists already are not touched (published batches are immutable): the next one starts from
    the indexes its last row names, so a batch costs the same whatever the corpus size. ``recheck``: walk every
    batch's stages again (committed: no-ops), e.g. to collect their versions."""
    prior: dict = {}
    out, corpus = [], None
    latest = None if recheck else datasets.latest(cfg.root, cfg.dataset, "corpus")
    done = {r["batch"]: r for r in datasets.read_table(latest).to_pylist()} if latest else {}
    for b in incremental_batches(cfg):
        if (r := done.get(str(b))) and r["batch_no"] == len(out) + 1:  # a prefix of the batches: skip, not re-run
            prior = {"exact_dedup": r["exact_index"] and datasets.ref_from_string(cfg.root, r["exact_index"]),
                     "minhash_dedup": r["minhash_index"] and datasets.ref_from_string(cfg.root, r["minhash_index"])}
            corpus = latest
            out.append({"batch": b, "curated": datasets.ref_from_string(cfg.root, r["version_ref"]), "corpus": latest,
                        "cross_batch_duplicates": r["cross_batch_duplicates"], **prior})
            continue
        curated, heldout = curate_stages(cfg, profile, steps, batch=b, prior=prior)
        row = {"batch": b, "curated": curated, "heldout": heldout, **prior}
        row["cross_batch_duplicates"] = 0 if getattr(steps, "dry", False) else cross_batch_duplicates(row)
        if not getattr(steps, "dry", False):  # the union's table: views {dataset}__corpus(_docs) read every batch
            idx = {k: str(prior[k]) if prior.get(k) else None for k in incremental.INCREMENTAL}
            params = incremental.CorpusParams(
                batch=str(b), documents=datasets.read_manifest(b)["num_rows"],
                cross_batch_duplicates=row["cross_batch_duplicates"], exact_index=idx["exact_dedup"],
                minhash_index=idx["minhash_dedup"])
            corpus = row["corpus"] = steps.stage("corpus", [curated, corpus], params, profile)
        out.append(row)
    return out


def cross_batch_duplicates(step: dict) -> int:
    """Documents of one batch dropped as copies of an earlier batch's (its keepers' and clusters' rows naming one)."""
    n = 0
    for key, col in (("xb_exact_keepers", "ed_duplicate_batch"), ("xb_minhash_clusters", "mh_duplicate_batch")):
        if step.get(key) is not None:
            t = datasets.read_table(step[key], columns=[col])
            n += t.num_rows - t.column(col).null_count if t.num_rows else 0
    return n


def incremental_batches(cfg: datasets_cfg.RunConfig) -> list[DatasetRef]:
    """The dataset's watched ingest batches, oldest first (the watch_state table's order)."""
    state = datasets.latest(cfg.root, cfg.dataset, "watch_state")
    names = datasets.read_table(state, columns=["batch"]).column("batch").to_pylist() if state else []
    return [datasets.ref_from_string(cfg.root, b) for b in dict.fromkeys(names)]


if __name__ == "__main__":
    print(curate(sys.argv[1]))
