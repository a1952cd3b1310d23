"""The local backend's default engine: llama.cpp over the bundled SmolLM2 GGUF (as is, or re-encoded as bf16 where
the CPU has bf16 dot products), batched sequences.

One model load for the module (about a second); generations are a few tokens, greedy where the text is compared."""

import json

import pyarrow as pa
import pytest

from tasks.augment.augmenter import Augmenter
from tasks.augment.backends import Sampling, local_engine
from tasks.augment.params import AugmentParams
from tasks.augment.rows import AUG_SCHEMA, aug_keys, build_messages, generation_params
from tasks.common.assets import smollm2_gguf_path
from tests.conftest import SHARED_DATA

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make setup builds it)")

C4 = SHARED_DATA / "web" / "c4_sample" / "c4_sample.jsonl"
GREEDY = Sampling(0.0, 1.0, 8, ())


@pytest.fixture(scope="module")
def augmenter():
    return Augmenter(AugmentParams(max_new_tokens=16, max_input_tokens=256, batch_size=4, num_threads=1))


def _c4_docs(n: int) -> pa.Table:
    if not C4.is_file():
        pytest.skip(f"shared data not found at {C4}")
    texts = [json.loads(line)["text"] for _, line in zip(range(n), C4.open(encoding="utf-8"), strict=False)]
    return pa.table({"doc_id": [f"c4-{i}" for i in range(n)], "text": texts})


def _prompts(augmenter, texts):
    return augmenter.backend.chat_prompts([build_messages(t, augmenter.params) for t in texts])


def test_auto_picks_llama_cpp_and_loads_the_gguf_never_dequantized(augmenter, tmp_path, monkeypatch):
    import llama_cpp

    from tasks.augment.backends import LlamaCppBackend, llama_weights

    assert local_engine("auto") == "llama_cpp" and local_engine("auto", "/some/hf_model_dir") == "transformers"
    assert isinstance(augmenter.backend, LlamaCppBackend) and augmenter.backend.gguf == smollm2_gguf_path()
    assert augmenter.teacher.startswith("HuggingFaceTB/SmolLM2-135M-Instruct:SmolLM2-135M-Instruct.Q4_1.gguf@sha256:")
    assert augmenter.teacher.endswith(" via llama-cpp-python 0.3.36")
    # "auto" follows the CPU: bf16 only where llama.cpp has native bf16 dot products, and the teacher id says so
    native_bf16 = b"AVX512_BF16 = 1" in llama_cpp.llama_print_system_info()
    assert llama_weights("auto") == ("bf16" if native_bf16 else "as_is")
    assert (" as bf16 via " in augmenter.teacher) == native_bf16
    # as is: the file itself is loaded and nothing is written (a fresh cache root stays empty)
    monkeypatch.setenv("QUARRY_CACHE", str(tmp_path))
    b = LlamaCppBackend(num_threads=1, weights="as_is")
    assert b.loaded == smollm2_gguf_path() and " as bf16" not in b.teacher
    b.close()
    assert not (tmp_path / "models").exists()
    # bf16: one re-encoded GGUF of 2 bytes per parameter (never a float32 copy, never a left-over temporary, not
    # even one a killed writer left), reused by the next load
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / ".SmolLM2-135M-Instruct.Q4_1.bf16-0.gguf.999999999.tmp").write_bytes(b"partial")
    b = LlamaCppBackend(num_threads=1, weights="bf16")
    files = sorted((tmp_path / "models").iterdir())
    assert [f.name for f in files] == [b.loaded.name] and b.loaded.name.startswith("SmolLM2-135M-Instruct.Q4_1.bf16-")
    n_params = llama_cpp.llama_model_n_params(b._model)
    assert 2 * n_params <= b.loaded.stat().st_size < 2.2 * n_params
    mtime = b.loaded.stat().st_mtime_ns
    b.close()
    again = LlamaCppBackend(num_threads=1, weights="bf16")
    assert again.loaded == b.loaded and again.loaded.stat().st_mtime_ns == mtime
    again.close()


def test_gguf_weights_are_validated_and_change_the_aug_key():
    with pytest.raises(ValueError, match="gguf_weights must be one of"):
        AugmentParams(gguf_weights="fp8")
    docs = pa.table({"doc_id": ["a"], "text": ["x"]})
    as_is, bf16 = AugmentParams(gguf_weights="as_is"), AugmentParams(gguf_weights="bf16")
    assert aug_keys(docs, as_is) != aug_keys(docs, bf16)  # other numerics, other text: never reused across them


def test_bf16_weights_keep_the_greedy_text_of_the_gguf_as_is(augmenter):
    """bf16 keeps 8 significant bits of every Q4_1 weight: the greedy continuation of real text starts the same."""
    from tasks.augment.backends import LlamaCppBackend

    prompts = _prompts(augmenter, [t[:600] for t in _c4_docs(3).column("text").to_pylist()])
    texts = {}
    for w in ("as_is", "bf16"):
        b = LlamaCppBackend(batch_size=3, num_threads=1, weights=w)
        texts[w] = [c.text for c in b.generate_prompts(prompts, GREEDY, [0, 0, 0])]
        b.close()
    same = sum(x[:12] == y[:12] for x, y in zip(texts["as_is"], texts["bf16"], strict=True))
    assert same >= 2, texts


def test_llama_cpp_tokenizes_the_chat_prompt_like_the_hf_tokenizer(augmenter):
    (prompt,) = _prompts(augmenter, ["Water boils at 100 C at sea level. Ünïcödé, 日本語 and {braces}."])
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    hf = augmenter.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert augmenter.backend.tokenize(prompt) == hf  # so aug_prompt_tokens agree across engines


def test_greedy_generation_is_deterministic_and_batch_independent(augmenter):
    prompts = _prompts(augmenter, [f"Fact {i}: the heart has {i + 2} valves." for i in range(5)])
    backend = augmenter.backend
    batched = backend.generate_prompts(prompts, GREEDY, [0] * 5)  # batch_size 4: the fifth joins as one finishes
    again = backend.generate_prompts(prompts, GREEDY, [7] * 5)  # greedy ignores the seed
    alone = backend.generate_prompts(prompts[4:], GREEDY, [0])
    assert [c.text for c in batched] == [c.text for c in again]
    assert batched[4].text == alone[0].text
    for c in batched:
        assert c.finish_reason in ("stop", "length") and c.text and 1 <= c.completion_tokens <= 8
        assert c.prompt_tokens == len(backend.tokenize(prompts[0])) or c.prompt_tokens > 20


def test_seeded_sampling_follows_the_document_seed_not_its_neighbours(augmenter):
    backend = augmenter.backend
    p = _prompts(augmenter, ["Describe how a volcano forms.", "Explain photosynthesis.", "What is an atom?"])
    hot = Sampling(1.0, 0.95, 12, ())
    a = backend.generate_prompts(p, hot, [11, 22, 33])
    b = backend.generate_prompts(p[::-1], hot, [33, 22, 11])  # other order, other neighbours
    assert [c.text for c in a] == [c.text for c in b][::-1]
    c = backend.generate_prompts(p[:1], hot, [12])
    assert c[0].text != a[0].text  # another seed, another sample (12 tokens at temperature 1)


def test_stop_string_ends_the_text_before_it_and_length_counts_tokens(augmenter):
    backend = augmenter.backend
    (p,) = _prompts(augmenter, ["Write a long story about a dragon who learns to read."])
    free = backend.generate_prompts([p], Sampling(0.0, 1.0, 24, ()), [0])[0]
    assert free.finish_reason == "length" and free.completion_tokens == 24
    stop = free.text.strip()[5:8]  # a string the greedy text is known to contain
    cut = backend.generate_prompts([p], Sampling(0.0, 1.0, 24, (stop,)), [0])[0]
    assert cut.finish_reason == "stop" and stop not in cut.text and free.text.startswith(cut.text)
    assert cut.completion_tokens < 24 and cut.latency_s > 0


def test_augments_real_documents_with_the_same_provenance_fields(augmenter):
    docs = _c4_docs(6)
    batch = pa.concat_tables([docs, pa.table({"doc_id": ["null"], "text": pa.array([None], pa.string())})])
    out = augmenter(batch)
    assert out.select(AUG_SCHEMA.names).schema == AUG_SCHEMA and out.num_rows == 7
    assert out.column("aug_key").to_pylist() == aug_keys(batch, augmenter.params).to_pylist()
    stats = augmenter.backend.last_stats
    assert stats["generated_tokens"] == sum(out.column("aug_completion_tokens").drop_null().to_pylist())
    for r in out.to_pylist()[:6]:
        assert json.loads(r["aug_params"]) == generation_params(augmenter.params)
        assert r["aug_document_tokens"] <= 256 and r["aug_prompt_tokens"] > r["aug_document_tokens"]
        assert r["aug_finish_reason"] in ("stop", "length") and 1 <= r["aug_completion_tokens"] <= 16
        assert (r["aug_error"] is None) == (r["aug_text"] is not None)
    assert out.to_pylist()[6]["aug_error"] == "aug_null_text"
    assert sum(e is None for e in out.column("aug_error").to_pylist()[:6]) >= 5


def test_threads_come_from_the_params_or_the_profile(monkeypatch):
    from tasks.augment.backends import LlamaCppBackend

    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # what Ray sets from the profile's num_cpus
    b = LlamaCppBackend(num_threads=None)
    assert b.num_threads == 3
    b.close()
    b = LlamaCppBackend(num_threads=1)
    assert b.num_threads == 1
    b.close()


def test_transformers_is_the_fallback_when_llama_cpp_is_missing(monkeypatch, caplog):
    import importlib.util

    import tasks.augment.backends as lb

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    assert lb.local_engine("auto") == "transformers"
    params = AugmentParams(max_new_tokens=2, max_input_tokens=32, num_threads=1)
    with caplog.at_level("WARNING", logger="quarry.augment"):
        aug = Augmenter(params)
    assert isinstance(aug.backend, lb.LocalBackend) and "llama_cpp is not importable" in caplog.text
    assert aug.teacher.endswith(" via transformers " + importlib.metadata.version("transformers"))
    one = pa.table({"doc_id": ["a"], "text": ["x"]})
    assert aug_keys(one, params) != aug_keys(one, AugmentParams())
