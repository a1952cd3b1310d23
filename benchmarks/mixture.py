"""Benchmark: mixture-search proxies per hour on this machine (issue 32).

One proxy = pack (a Dirichlet mixture at the proxy budget) -> train (the proxy preset) -> evaluate (held-out
bits/byte per domain), the stages flows/mixture.py runs per mixture, here called as plain functions (no Prefect) on
the local Ray profile over the tiny_mixture recipe's data (curated and tokenized once, not timed). Prints seconds per
proxy and proxies per hour, the number that sizes a search (RegMix trains 512 proxies).

    python benchmarks/mixture.py                     # 3 proxies, tiny preset, 40 steps (the recipe's)
    python benchmarks/mixture.py --proxies 5 --size nano --steps 25
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datasets_cfg  # noqa: E402
from flows import mixture as mixflow  # noqa: E402
from flows.curate import curate_stages  # noqa: E402
from flows.run import profile_for  # noqa: E402
from flows.run import stage as stage_task  # noqa: E402
from ray_cluster import runtime  # noqa: E402
from tasks.mixture import sampler  # noqa: E402
from tasks.mixture.config import Run  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "datasets_cfg" / "tiny_mixture.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proxies", type=int, default=3)
    ap.add_argument("--size", default=None, help="model preset (default: the recipe's mixture.model_size)")
    ap.add_argument("--steps", type=int, default=None, help="train steps (default: the recipe's)")
    ap.add_argument("--recipe", default=str(RECIPE))
    args = ap.parse_args()
    from flows import run

    plain = SimpleNamespace(stage=stage_task.fn, section=run.section)  # the tiny_mixture recipe has no sections
    with tempfile.TemporaryDirectory() as tmp:
        cfg = datasets_cfg.load(args.recipe).model_copy(update={"storage_root": f"{tmp}/store"})
        mix = cfg.mixture
        profile = profile_for(cfg.cluster)
        with runtime.connected(profile):
            pool, heldout = curate_stages(cfg, profile, plain)
            tokens = stage_task.fn("tokenize", [pool], cfg.tokenize, profile)
            avail = mixflow.component_tokens(tokens, mix.components)
            draws = sampler.sample(avail, args.proxies, concentration=mix.concentration,
                                   target_tokens=mix.target_tokens, max_epochs=mix.max_epochs, seed=mix.seed)
            times = []
            for i, d in enumerate(draws):
                r = Run("search", i, tuple(zip(sorted(avail), d.round(6).tolist(), strict=True)))
                t0 = time.perf_counter()
                mixflow.proxy(cfg, tokens, heldout, r, args.size or mix.model_size, mix.target_tokens,
                              args.steps or mix.max_steps, profile, steps=plain)
                times.append(time.perf_counter() - t0)
                print(f"proxy {i}: {times[-1]:.1f} s", flush=True)
    med = statistics.median(times)
    print(f"{args.proxies} proxies ({args.size or mix.model_size}, {args.steps or cfg.train.max_steps} steps, "
          f"{mix.target_tokens} tokens): median {med:.1f} s/proxy = {3600 / med:.0f} proxies/hour on this machine")


if __name__ == "__main__":
    main()
