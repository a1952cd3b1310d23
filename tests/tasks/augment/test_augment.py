"""augment: prompt building, truncation, parsing, provenance, resume keys, cost; integration on real C4 docs."""

import json
from pathlib import Path

import pyarrow as pa
import pytest

from tasks.augment.augmenter import Augmenter
from tasks.augment.backends import Sampling
from tasks.augment.cost import augment_cost
from tasks.augment.params import AugmentParams
from tasks.augment.prompts import FOCUS_MARKER, build_prompt, doc_seed, load_truncation_tokenizer, truncate_document
from tasks.augment.rows import AUG_SCHEMA, aug_keys, build_messages, generation_params, parse_completion, pending_docs
from tasks.augment.vllm_hooks import vllm_postprocess, vllm_preprocess

C4 = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "web" / "c4_sample" / "c4_sample.jsonl"

# The TPT generation prompt exactly as printed in the paper (Wang et al. 2025, arXiv:2509.20186) / specs/tpt.md.
PAPER_PROMPT = (
    "{{CONTEXT}}\n\n## End of the context\n\nSimulate an expert's in-depth thought process as they analyze the above "
    "context, focusing on complex and informative aspects. Skip trivial details. Use Feynman technique whenever "
    "possible to ensure a deep understanding."
)
P = AugmentParams()


def _c4_docs(n: int) -> pa.Table:
    if not C4.is_file():
        pytest.skip(f"shared data not found at {C4}")
    rows = [json.loads(line) for _, line in zip(range(n), C4.open(encoding="utf-8"), strict=False)]
    return pa.table({"doc_id": [f"c4-{i}" for i in range(n)], "text": [r["text"] for r in rows]})


@pytest.fixture(scope="module")
def tokenizer():
    return load_truncation_tokenizer("smollm2")


@pytest.fixture(scope="module")
def augmenter():
    # 1 torch thread: on a shared 2-core box OpenMP spin-waits make 2 threads far slower.
    return Augmenter(AugmentParams(max_new_tokens=32, batch_size=8, num_threads=1))


# ---------------------------------------------------------------- prompt building


def test_paper_template_is_verbatim_with_document_substituted():
    doc = "Water boils at {100} C at sea level.\n\nIt boils lower on a mountain."  # braces must survive
    assert build_prompt(doc, "tpt_paper_v1") == PAPER_PROMPT.replace("{{CONTEXT}}", doc)


def test_messages_are_one_user_turn_holding_the_prompt():
    msgs = build_messages("Some text.", P, seed=3)
    assert msgs == [{"role": "user", "content": PAPER_PROMPT.replace("{{CONTEXT}}", "Some text.")}]


def test_random_focus_inserts_the_marker_once_at_a_seeded_position():
    doc = "abcdefghijklmnopqrstuvwxyz" * 4
    prompts = [build_prompt(doc, "tpt_random_focus_v1", seed=s) for s in range(8)]
    for p in prompts:
        context = p.split("\n\n## End of the context")[0]
        assert context.count(FOCUS_MARKER) == 1
        assert context.replace(FOCUS_MARKER, "") == doc
        assert f"An expert is focused at the {FOCUS_MARKER} position. Simulate the expert's in-depth" in p
    assert prompts[0] == build_prompt(doc, "tpt_random_focus_v1", seed=0)
    assert len({p.index(FOCUS_MARKER) for p in prompts}) > 1


def test_unknown_template_is_rejected_at_config_time():
    with pytest.raises(ValueError, match="unknown template"):
        AugmentParams(template="tpt_nope_v1")


def test_a_pasted_key_is_rejected_without_being_echoed():
    with pytest.raises(ValueError) as e:
        AugmentParams(backend="openai", api_key_env="sk-live-abc123")
    assert "sk-live-abc123" not in str(e.value)


# ---------------------------------------------------------------- truncation


def test_default_input_budget_is_2k_tokens():
    assert P.max_input_tokens == 2048


def test_truncation_keeps_an_exact_prefix_within_the_token_budget(tokenizer):
    text = " ".join(_c4_docs(20).column("text").to_pylist())
    n_full = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    cut, n, truncated = truncate_document(text, tokenizer, 50)
    assert truncated and n == 50 and n_full > 50
    assert text.startswith(cut) and len(cut) < len(text)
    assert (
        tokenizer(cut, add_special_tokens=False)["input_ids"]
        == tokenizer(text, add_special_tokens=False)["input_ids"][:50]
    )


def test_short_document_is_not_truncated(tokenizer):
    text, n, truncated = truncate_document("A short note.", tokenizer, 2048)
    assert (text, truncated) == ("A short note.", False) and 0 < n < 10


def test_multibyte_text_is_cut_on_a_character_boundary(tokenizer):
    text = "日本語のテキストです。" * 50
    cut, n, truncated = truncate_document(text, tokenizer, 7)
    assert truncated and text.startswith(cut) and "\ufffd" not in cut and n == 7


# ---------------------------------------------------------------- output parsing


def test_missing_close_tag_keeps_the_whole_completion_as_thinking():
    assert parse_completion("Let me think about it.", "stop", P) == ("Let me think about it.", "stop", None)


def test_length_limit_gives_finish_reason_length():
    thinking, reason, error = parse_completion("A long chain of reasoning that was cut", "length", P)
    assert (reason, error) == ("length", None) and thinking.startswith("A long chain")


def test_think_tags_are_stripped_and_text_after_close_tag_is_dropped():
    thinking, reason, error = parse_completion("<think>\nStep 1. Step 2.\n</think>\nThe answer is 4.", "length", P)
    assert (thinking, reason, error) == ("Step 1. Step 2.", "stop", None)


@pytest.mark.parametrize("text", ["", "   \n", None])
def test_empty_completion_is_an_error_row_with_a_reason(text):
    assert parse_completion(text, "stop", P) == (None, "stop", "aug_empty_completion")


def test_only_tags_is_empty_thinking():
    assert parse_completion("<think>\n\n</think>", "stop", P) == (None, "stop", "aug_empty_thinking")


def test_engine_error_is_passed_through():
    assert parse_completion(None, "error", P, "http 503") == (None, "error", "http 503")


# ---------------------------------------------------------------- provenance keys / resume


def test_aug_key_depends_on_generation_params_not_on_transport():
    docs = pa.table({"doc_id": ["a", "b"], "text": ["x", "y"]})
    base = aug_keys(docs, P).to_pylist()
    assert len(set(base)) == 2
    assert aug_keys(docs, AugmentParams(concurrency=2, batch_size=1, retries=0)).to_pylist() == base
    for changed in (
        AugmentParams(temperature=0.7),
        AugmentParams(template="tpt_random_focus_v1"),
        AugmentParams(seed=1),
        AugmentParams(max_input_tokens=1024),
        AugmentParams(separator="\n"),
    ):
        assert aug_keys(docs, changed).to_pylist() != base


def test_pending_docs_skips_done_rows_and_retries_failed_ones():
    docs = pa.table({"doc_id": ["a", "b", "c"], "text": ["x", "y", "z"]})
    keys = aug_keys(docs, P)
    done = pa.table({"aug_key": keys.to_pylist()[:2], "aug_error": [None, "http 503"]})
    assert pending_docs(docs, done, P).column("doc_id").to_pylist() == ["b", "c"]
    assert pending_docs(docs, done, P, retry_failed=False).column("doc_id").to_pylist() == ["c"]
    assert pending_docs(docs, done, AugmentParams(seed=9)).num_rows == 3  # other params: nothing is done
    assert pending_docs(docs, None, P).num_rows == 3


# ---------------------------------------------------------------- cost accounting


def test_cost_follows_the_documented_formula():
    rows = pa.table(
        {
            "aug_error": [None, None, "http 500"],
            "aug_finish_reason": ["stop", "length", "error"],
            "aug_prompt_tokens": [100, 200, None],
            "aug_completion_tokens": [300, 500, None],
            "aug_document_tokens": [80, 150, 90],
        }
    )
    cost = augment_cost(rows, elapsed_s=10.0, num_gpus=2)
    assert cost["generated_tokens"] == 800 and cost["tokens_per_s"] == 80.0
    assert cost["train_tokens"] == 80 + 300 + 150 + 500
    assert cost["gpu_hours_per_1b_train_tokens"] == pytest.approx(2 * 10 / 3600 / (1030 / 1e9))
    assert (cost["docs_ok"], cost["docs_failed"], cost["finish_length"], cost["finish_error"]) == (2, 1, 1, 1)


# ---------------------------------------------------------------- vllm halves (engine-free)


def test_vllm_halves_round_trip_an_engine_row():
    params = AugmentParams(backend="vllm", max_new_tokens=16)
    row = {"doc_id": "d1", "text": "The mitochondria is the powerhouse of the cell.", "domain": "web"}
    pre = vllm_preprocess(row, params)
    assert pre["messages"] == build_messages(row["text"], params, seed=doc_seed(0, "d1"))
    assert pre["sampling_params"] == {
        "temperature": 0.6, "top_p": 0.9, "max_tokens": 16, "seed": doc_seed(0, "d1"), "stop": ["</think>"],
        "detokenize": True,
    }  # fmt: skip
    # What Ray's vLLM stage adds (ray/llm/_internal/batch/stages/vllm_engine_stage.py, vLLMOutputData).
    engine_out = {
        "generated_text": "Energy comes from ATP.", "num_input_tokens": 70, "num_generated_tokens": 16,
        "generated_tokens": [1] * 16, "time_taken_llm": 0.5, "__inference_error__": "", "request_id": 3,
    }  # fmt: skip
    engine = pre | engine_out
    out = vllm_postprocess(engine, params)
    assert {k: out[k] for k in row} == row
    assert set(out) == set(row) | set(AUG_SCHEMA.names)
    assert out["aug_finish_reason"] == "length" and out["aug_completion_tokens"] == 16
    assert out["aug_text"] == row["text"] + "\n\n<think>\nEnergy comes from ATP.\n</think>"
    assert (
        out["aug_teacher"] == "smollm2" and out["aug_key"] == aug_keys(pa.table({"doc_id": ["d1"], "text": [row["text"]]}), params)[0].as_py()
    )
    failed = vllm_postprocess(engine | {"__inference_error__": "ValueError: prompt too long"}, params)
    assert failed["aug_finish_reason"] == "error" and "prompt too long" in failed["aug_error"]
    empty = vllm_postprocess(vllm_preprocess({"doc_id": "d2", "text": None}, params) | engine_out, params)
    assert empty["aug_error"] == "aug_null_text" and empty["aug_text"] is None


# ---------------------------------------------------------------- integration: the real bundled model


def test_augments_8_real_documents_with_full_provenance(augmenter, tokenizer):
    docs = _c4_docs(8)
    batch = pa.concat_tables([docs, pa.table({"doc_id": ["null", "blank"], "text": [None, " \n "]})])
    out = augmenter(batch)
    assert out.num_rows == 10 and out.column("doc_id").to_pylist() == batch.column("doc_id").to_pylist()
    assert out.select(AUG_SCHEMA.names).schema == AUG_SCHEMA
    params = augmenter.params
    keys = aug_keys(batch, params).to_pylist()
    for i, r in enumerate(out.to_pylist()):
        assert r["aug_source_id"] == r["doc_id"] and r["aug_key"] == keys[i]
        assert r["aug_teacher"].startswith("HuggingFaceTB/SmolLM2-135M-Instruct:") and "@sha256:" in r["aug_teacher"]
        assert r["aug_template_id"] == "tpt_paper_v1"
        assert json.loads(r["aug_params"]) == generation_params(params)
        assert r["aug_seed"] == doc_seed(params.seed, r["doc_id"])
        if i >= 8:
            assert r["aug_text"] is None and r["aug_finish_reason"] == "error"
            assert r["aug_error"] == ("aug_null_text" if r["doc_id"] == "null" else "aug_empty_document")
            continue
        n_doc = len(tokenizer(r["text"], add_special_tokens=False)["input_ids"])
        assert r["aug_document_tokens"] == min(n_doc, 2048) and r["aug_truncated"] == (n_doc > 2048)
        assert r["aug_prompt_tokens"] > r["aug_document_tokens"]  # template + chat wrapper around the document
        assert 1 <= r["aug_completion_tokens"] <= 32
        assert r["aug_finish_reason"] in ("stop", "length")
        if r["aug_finish_reason"] == "length":
            assert r["aug_completion_tokens"] == 32
        assert r["aug_latency_s"] > 0
        if r["aug_error"] is None:
            assert r["aug_thinking"].strip() == r["aug_thinking"] and r["aug_thinking"]
            assert r["aug_text"] == f"{r['text']}\n\n<think>\n{r['aug_thinking']}\n</think>"
        else:  # an empty generation is possible from a 135M model; it must then carry a reason
            assert r["aug_error"] in ("aug_empty_completion", "aug_empty_thinking") and r["aug_text"] is None
    assert sum(r is None for r in out.column("aug_error").to_pylist()[:8]) >= 6
    cost = augment_cost(out, elapsed_s=1.0)
    assert cost["docs"] == 10 and cost["generated_tokens"] == sum(
        out.column("aug_completion_tokens").drop_null().to_pylist()
    )


def test_empty_batch_gives_an_empty_table_with_the_aug_columns(augmenter):
    out = augmenter(pa.table({"doc_id": pa.array([], pa.string()), "text": pa.array([], pa.string())}))
    assert out.num_rows == 0 and out.select(AUG_SCHEMA.names).schema == AUG_SCHEMA


def test_missing_text_column_is_a_clear_error(augmenter):
    with pytest.raises(KeyError, match="doc_id and text"):
        augmenter(pa.table({"doc_id": ["a"]}))


def test_hitting_max_new_tokens_reports_length(augmenter):
    msgs = [build_messages("Explain in great detail how a steam engine works.", augmenter.params)]
    c = augmenter.backend.generate(msgs, Sampling(0.6, 0.9, 3, ("</think>",)), [1])[0]
    assert (c.finish_reason, c.completion_tokens) == ("length", 3)


def test_same_seed_same_batch_gives_the_same_augmentation(augmenter):
    batch = _c4_docs(2)
    a, b = augmenter(batch), augmenter(batch)
    assert a.column("aug_thinking").to_pylist() == b.column("aug_thinking").to_pylist()


def test_second_load_uses_the_dequantized_cache(tmp_path, monkeypatch):
    import torch

    from tasks.augment.backends import load_local_model, model_cache_dir
    from tasks.common.assets import smollm2_gguf_path

    monkeypatch.setenv("QUARRY_CACHE", str(tmp_path))
    cached = model_cache_dir(smollm2_gguf_path())
    assert cached.is_relative_to(tmp_path) and not cached.exists()
    m1, _, hit1 = load_local_model()
    assert not hit1 and (cached / "quarry_model.json").is_file() and (cached / "model.safetensors").is_file()
    m2, tok2, hit2 = load_local_model()
    assert hit2 and tok2.chat_template
    assert not hasattr(m2.config, "quantization_config")
    sd1, sd2 = m1.state_dict(), m2.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
