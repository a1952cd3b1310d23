"""The `local` and `openai` backends as the stage's actor: `Augmenter(params)` loads the teacher once and
`__call__(batch)` returns the batch plus the aug_* columns; `ReusingAugmenter` first copies over the rows an earlier
augment version already generated the same way (same aug_key), so the model loads only for new documents."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc

from tasks.augment.backends import LlamaCppBackend, LocalBackend, OpenAIBackend
from tasks.augment.backends.base import Backend, Completion, Sampling, local_engine
from tasks.augment.params import AugmentParams
from tasks.augment.prompts import load_truncation_tokenizer
from tasks.augment.rows import aug_keys, check_input, parse_completions, pending_docs, prepare, teacher_id
from tasks.common.assets import SMOLLM2
from tasks.common.stage import implements

_log = logging.getLogger("quarry.augment")


class Augmenter:
    """Kind (b): `Augmenter(params)` loads the teacher once; `__call__(batch)` returns batch + aug_* columns."""

    def __init__(self, params: AugmentParams):
        self.params = params
        self.backend: Backend
        if params.backend == "local":
            engine = local_engine(params.engine, params.model)
            if engine == "llama_cpp":
                self.backend = LlamaCppBackend(
                    params.model,
                    batch_size=params.batch_size,
                    num_threads=params.num_threads,
                    weights=params.gguf_weights,
                )
            else:
                if params.engine == "auto" and params.model == SMOLLM2:
                    _log.warning("augment: llama_cpp is not importable; the local teacher runs on transformers")
                self.backend = LocalBackend(params.model, batch_size=params.batch_size, num_threads=params.num_threads)
            self.tokenizer = self.backend.tokenizer
        elif params.backend == "openai":
            self.backend = OpenAIBackend(
                base_url=params.base_url,
                model=params.model,
                api_key_env=params.api_key_env,
                concurrency=params.concurrency,
                retries=params.retries,
                timeout_s=params.timeout_s,
                backoff_s=params.backoff_s,
            )
            self.tokenizer = load_truncation_tokenizer(params.tokenizer or params.model)
        else:
            raise ValueError(
                "backend 'vllm' runs as Ray Data's LLM processor around vllm_preprocess/vllm_postprocess "
                "(built in ray_cluster/), not as an Augmenter actor"
            )
        self.teacher = teacher_id(params)
        self.sampling = Sampling(params.temperature, params.top_p, params.max_new_tokens, tuple(params.stop))

    def __call__(self, batch: pa.Table) -> pa.Table:
        check_input(batch)
        prepared = [
            prepare(d, t, self.params, self.tokenizer)
            for d, t in zip(batch.column("doc_id").to_pylist(), batch.column("text").to_pylist(), strict=True)
        ]
        todo = [i for i, p in enumerate(prepared) if p.messages is not None]
        done = self.backend.generate(
            [prepared[i].messages for i in todo], self.sampling, [prepared[i].seed for i in todo]
        )
        completions: list[Completion | None] = [None] * len(prepared)
        for i, c in zip(todo, done, strict=True):
            completions[i] = c
        return parse_completions(batch, prepared, completions, self.params, self.teacher)


REUSE_COLUMNS: tuple[str, ...] = ()  # the executor hands the actor every column of earlier augment versions


@implements("augment")
class ReusingAugmenter:
    """The Augmenter, plus reuse: rows whose aug_key an earlier augment version of the dataset already produced
    (``history``, handed over by the executor) are copied over; the model loads only if a document needs it."""

    def __init__(self, params: AugmentParams, history: pa.Table | None = None):
        self.params = params
        self.inner: Augmenter | None = None
        self.previous = None
        if history is not None and "aug_error" in history.column_names:
            self.previous = history.filter(pc.is_null(history.column("aug_error")))

    def __call__(self, batch: pa.Table) -> pa.Table:
        todo = pending_docs(batch, self.previous, self.params)
        parts = []
        if todo.num_rows:
            if self.inner is None:
                self.inner = Augmenter(self.params)
            parts.append(self.inner(todo))
        if todo.num_rows < batch.num_rows:
            keys = aug_keys(batch, self.params)
            done_keys = pc.is_in(keys, value_set=self.previous.column("aug_key").combine_chunks())
            reused = self.previous.filter(pc.is_in(self.previous.column("aug_key"), value_set=pc.filter(keys, done_keys)))
            # exactly one reused row per key, in the batch's order
            parts.append(reused.take(pc.index_in(pc.filter(keys, done_keys), value_set=reused.column("aug_key"))))
        return pa.concat_tables(parts, promote_options="permissive")
