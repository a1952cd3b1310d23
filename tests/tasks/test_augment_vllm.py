"""augment's vllm backend: Ray Data's LLM processor around tasks.augment.vllm_preprocess / vllm_postprocess.

The processor is built the way ray_cluster/ builds it (`build_vllm_processor` below mirrors the snippet handed to the
engine). Building it needs no GPU; running it does (`@pytest.mark.gpu`, excluded by default). The teacher is the
bundled SmolLM2 GGUF's dequantized cache folder, a plain Hugging Face model directory vLLM loads offline.
"""

import functools

import pyarrow as pa
import pytest

from tasks.augment import AUG_SCHEMA, AugmentParams, aug_keys, vllm_postprocess, vllm_preprocess


def build_vllm_processor(params: AugmentParams, *, concurrency: int = 1, batch_size: int = 64):
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    config = vLLMEngineProcessorConfig(
        model_source=params.model,
        # prompt = up to max_input_tokens of document + template/chat wrapper (~100 tokens) + the thinking
        engine_kwargs={"max_model_len": params.max_input_tokens + 256 + params.max_new_tokens},
        concurrency=concurrency,
        batch_size=batch_size,
        should_continue_on_error=True,  # a failed request becomes an error row, not a failed job
    )
    return build_processor(
        config,
        preprocess=functools.partial(vllm_preprocess, params=params),
        postprocess=functools.partial(vllm_postprocess, params=params),
    )


@pytest.fixture(scope="module")
def teacher_dir() -> str:
    from tasks.llm_backends import load_local_model, model_cache_dir, smollm2_gguf_path

    load_local_model()  # fills the cache on first use
    return str(model_cache_dir(smollm2_gguf_path()))


def test_vllm_processor_builds_from_augment_params(ray_local, teacher_dir):
    params = AugmentParams(backend="vllm", model=teacher_dir, max_new_tokens=64, max_input_tokens=512)
    processor = build_vllm_processor(params)
    assert type(processor).__name__ == "Processor"


@pytest.mark.gpu
def test_vllm_processor_augments_documents_on_gpu(ray_local, teacher_dir):
    pytest.importorskip("vllm")
    import ray
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    params = AugmentParams(backend="vllm", model=teacher_dir, max_new_tokens=32, max_input_tokens=512)
    texts = ["The heart pumps blood through the body.", "Rust guarantees memory safety without a GC.", None]
    docs = pa.table({"doc_id": ["a", "b", "c"], "text": texts, "domain": ["web"] * 3})
    rows = build_vllm_processor(params, batch_size=4)(ray.data.from_arrow(docs)).take_all()
    rows = sorted(rows, key=lambda r: r["doc_id"])
    assert [r["doc_id"] for r in rows] == ["a", "b", "c"] and all(set(AUG_SCHEMA.names) <= set(r) for r in rows)
    assert [r["aug_key"] for r in rows] == aug_keys(docs, params).to_pylist()
    for r in rows[:2]:
        assert r["aug_error"] is None and r["aug_finish_reason"] in ("stop", "length")
        assert 1 <= r["aug_completion_tokens"] <= 32 and r["aug_text"].startswith(r["text"])
    assert rows[2]["aug_error"] == "aug_null_text" and rows[2]["aug_text"] is None
