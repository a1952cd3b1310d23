"""The main job on the embedded default: curate tiny.yaml, train a tiny Llama on it, evaluate it, print a summary.

    make demo                      # set-up + this
    quarry run demo datasets_cfg/tiny.yaml
"""

from __future__ import annotations

import sys

from prefect import flow

import datasets_cfg
from flows import runinfo
from flows.evaluate import evaluate
from flows.runinfo import DEFAULT_RECIPE, ProfileName, Recipe, StorageRoot
from storage import catalog


@flow(name="demo", log_prints=True, flow_run_name=runinfo.run_name)
@runinfo.tracked_flow
def demo(recipe: Recipe = DEFAULT_RECIPE, profile: ProfileName = None, storage_root: StorageRoot = None) -> str:
    cfg = datasets_cfg.load(recipe)
    result = evaluate(recipe)  # evaluate -> train -> curate, each a subflow and a no-op when already committed
    con = catalog.connect(cfg.root)
    d = cfg.dataset
    print("\n== curation funnel ==")
    print(con.sql(f"select coalesce(drop_reason, '(kept)') reason, count(*) docs from {d}__minhash_dedup group by 1 order by 2 desc"))
    print("== kept documents per domain ==")
    print(con.sql(f"select domain, count(*) docs, sum(raw_bytes) bytes from {d}__kept group by 1 order by 1"))
    print("== training ==")
    print(con.sql(f"select min(step) first_step, max(step) steps, arg_max(loss, step) final_loss, min(loss) min_loss from {d}__train"))
    print("== evaluation ==")
    print(con.sql(f"select task, metric, round(value, 4) value, round(stderr, 4) stderr, n from {d}__eval_results order by task"))
    print(f"explore: quarry sql \"select * from versions\"   (storage root: {cfg.root})")
    return result


if __name__ == "__main__":
    print(demo(sys.argv[1] if len(sys.argv) > 1 else "datasets_cfg/tiny.yaml"))
