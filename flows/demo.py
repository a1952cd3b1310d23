"""The main job on the embedded default: curate tiny.yaml, train a tiny Llama on it, evaluate it, print a summary.

    make demo                      # set-up + this
    quarry run demo datasets_cfg/tiny.yaml
"""

from __future__ import annotations

import sys

from prefect import flow

import datasets_cfg
from dashboards import reports
from flows import runinfo
from flows.evaluate import evaluate
from flows.runinfo import DEFAULT_RECIPE, ProfileName, Recipe, StorageRoot
from storage import catalog

TINY = str(datasets_cfg.RECIPES_DIR / "tiny.yaml")  # absolute: the default works from any working directory


@flow(name="demo", log_prints=True, flow_run_name=runinfo.run_name)
@runinfo.tracked_flow
def demo(recipe: Recipe = DEFAULT_RECIPE, profile: ProfileName = None, storage_root: StorageRoot = None) -> str:
    cfg = datasets_cfg.load(recipe)
    result = evaluate(recipe)  # evaluate -> train -> curate, each a subflow and a no-op when already committed
    con = catalog.connect(cfg.root)
    for title, relation in reports.run(con, "demo", dataset=cfg.dataset):
        print(f"\n== {title} ==")
        print(relation)
    print(f"explore: quarry sql \"select * from versions\"   (storage root: {cfg.root})")
    return result


if __name__ == "__main__":
    print(demo(sys.argv[1] if len(sys.argv) > 1 else TINY))
