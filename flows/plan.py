"""What a recipe will do, before it does it: ``quarry run --plan``.

    quarry run --plan curate datasets_cfg/tiny.yaml

A section that would silently do nothing is refused at load (datasets_cfg/sections.py). ``plan`` walks a flow's own
composition (flows.curate.curate_stages, flows.train.train_on) with a runner that derives each stage's version
exactly as the executor does (ray_cluster.executor.planned) and checks whether it is
committed, so the plan cannot drift from what a run does: each stage is ``reuse`` (committed: that version),
``run`` (the version it will write) or ``skip`` (why), and the stale versions (flows/stale.py) of the recipe's
datasets are listed beside it. Nothing is computed and nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import datasets_cfg
from datasets_cfg.sections import FEEDS, NEEDS, check_sections
from flows import curate, evaluate, stale, train
from ray_cluster import executor, runtime
from storage import datasets
from storage.datasets import DatasetRef
from tasks import registry

# the sections each flow runs (beyond these a section belongs to another flow)
CURATE = ("ingest", "heldout", "quality_classifier", *registry.CURATION, "embed", "hkmeans", "semdedup", "balance")
FLOW_SECTIONS = {
    "ingest": ("ingest",),
    "curate": CURATE,
    "augment": (*CURATE, "augment"),
    "train": (*CURATE, "tokenize", "pack", "train"),
    "evaluate": (*CURATE, "tokenize", "pack", "train", "evaluate"),
    "demo": (*CURATE, "tokenize", "pack", "train", "evaluate"),
}
REQUIRED = {"augment": ("augment",), "train": ("tokenize", "pack", "train"),
            "evaluate": ("tokenize", "pack", "train", "evaluate"), "demo": ("tokenize", "pack", "train", "evaluate")}


@dataclass
class Step:
    stage: str
    dataset: str
    action: str  # reuse | run | skip
    version: str = ""
    why: str = ""


@dataclass
class DryRunner:
    """``stage``/``section`` with the Prefect tasks' signatures (flows/run.py) that derive versions and run nothing."""

    steps: list[Step] = field(default_factory=list)
    dry: bool = True

    def stage(self, name: str, inputs: list[DatasetRef | None], params: Any, profile: runtime.Profile,
              root: str | None = None, dataset: str | None = None, **_: Any) -> DatasetRef:
        ref = executor.planned(registry.stage(name), inputs, params, root=root, dataset=dataset)
        if datasets.is_committed(ref):
            self.steps.append(Step(name, ref.dataset, "reuse", ref.version, "committed"))
        else:
            waits = [p.stage for p in inputs if p is not None and not datasets.is_committed(p)]
            why = f"after {', '.join(dict.fromkeys(waits))}" if waits else "inputs committed"
            self.steps.append(Step(name, ref.dataset, "run", ref.version, why))
        return ref

    def section(self, name: str, src: DatasetRef, params: Any, profile: runtime.Profile) -> DatasetRef:
        return executor.run_chain(registry.section_steps(name), src, params, profile,
                                  runner=lambda step, inputs, p, prof: self.stage(step.name, inputs, p, prof))


def plan(flow: str, recipe: str) -> tuple[list[Step], list[dict], list[str]]:
    """(steps in run order with the skipped sections, stale versions of the recipe's datasets, warnings) of
    ``quarry run <flow> <recipe>``, computed without running anything."""
    if flow not in FLOW_SECTIONS:
        raise datasets_cfg.RecipeError(f"--plan knows the flows {sorted(FLOW_SECTIONS)}, not {flow!r}")
    cfg = datasets_cfg.load(recipe)
    warnings = check_sections(cfg, recipe, warn=False)
    missing = [s for s in REQUIRED.get(flow, ()) if getattr(cfg, s) is None]
    if missing:
        raise datasets_cfg.RecipeError(f"{recipe}: the {flow} flow needs {missing} section(s)")
    profile = runtime.load_profile(cfg.cluster)
    dry = DryRunner()
    if flow == "ingest":
        dry.stage("ingest", [], cfg.ingest, profile, root=cfg.root, dataset=cfg.dataset)
    else:
        docs, heldout = curate.curate_stages(cfg, profile, dry)
        if flow == "augment":
            dry.stage("augment", [docs], cfg.augment, profile)
        elif flow in ("train", "evaluate", "demo"):
            model = train.train_on(docs, cfg, profile, dry)
            if flow != "train":
                dry.stage("evaluate", [model, heldout], cfg.evaluate, profile)
                if cfg.evaluate.eval_dir:
                    dry.stage("eval_contamination", [model, docs], evaluate.contamination_params(cfg), profile)
    steps = dry.steps + skipped(cfg, flow, {s.stage for s in dry.steps})
    names = {cfg.dataset, f"{cfg.dataset}_qc_positive", f"{cfg.dataset}_qc_negative"}
    stale_rows = [r for r in stale.stale_versions(cfg.root) if r["ref"].split("/", 1)[0] in names]
    return steps, stale_rows, warnings


def skipped(cfg: datasets_cfg.RunConfig, flow: str, ran: set[str]) -> list[Step]:
    """The flow's sections that will not run: absent from the recipe, or present but missing what they need."""
    out = []
    for name in FLOW_SECTIONS[flow]:
        stages = {s.name for s in registry.section_steps(name)} | {name}
        if stages & ran:
            continue
        if getattr(cfg, name, None) is None:
            out.append(Step(name, cfg.dataset, "skip", why="section absent"))
        else:  # present and not run: check_sections warned or refused already; say what it waits for
            needs = [n for n in (*NEEDS.get(name, ((),))[0], *FEEDS.get(name, ((),))[0])
                     if getattr(cfg, n, None) is None]
            out.append(Step(name, cfg.dataset, "skip", why=f"needs {', '.join(needs)}" if needs else "not run"))
    return out


def lines(steps: list[Step], stale_rows: list[dict], warnings: list[str]) -> list[str]:
    """The plan as text: one line per stage, then the stale versions and the warnings."""
    out = [f"{s.action:6s} {s.dataset}/{s.stage}" + (f"/{s.version}" if s.version else "") + f"  ({s.why})"
           for s in steps]
    counts = {a: sum(s.action == a for s in steps) for a in ("run", "reuse", "skip")}
    out.append(f"{counts['run']} to run, {counts['reuse']} reused from the store, {counts['skip']} skipped; "
               "nothing was run")
    for r in stale_rows:
        out.append(f"stale  {r['ref']}  recorded {r['recorded']} -> now {r['current']}: {'; '.join(r['changes'])}")
    out += [f"warning: {w}" for w in warnings]
    return out

