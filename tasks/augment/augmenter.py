"""The `local` and `openai` backends as the stage's actor: `Augmenter(params)` loads the teacher once and
`__call__(batch)` returns the batch plus the aug_* columns; `ReusingAugmenter` first copies over the generations an
earlier augment version already made of the same text the same way (same aug_key), so the model loads only for new
documents."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc

from tasks.augment.backends import LlamaCppBackend, LocalBackend, OpenAIBackend
from tasks.augment.backends.base import Backend, Completion, Sampling, local_engine
from tasks.augment.params import AugmentParams
from tasks.augment.prompts import load_truncation_tokenizer
from tasks.augment.rows import AUG_SCHEMA, aug_keys, check_input, parse_completions, prepare, teacher_id
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


# the executor hands the actor only these columns of earlier augment versions: the generation, never the old
# documents (a reused row keeps the current batch's doc_id, text and other columns)
REUSE_COLUMNS: tuple[str, ...] = tuple(f.name for f in AUG_SCHEMA)


@implements("augment")
class ReusingAugmenter:
    """The Augmenter, plus reuse: a row whose aug_key (a hash of the exact text it reads, the teacher and the
    generation parameters) an earlier augment version of the dataset already produced without error (``history``,
    handed over by the executor) gets that generation's aug_* columns; the model loads only if a document needs it.
    The row itself (doc_id, text, every other column) is always the current batch's."""

    def __init__(self, params: AugmentParams, history: pa.Table | None = None):
        self.params = params
        self.inner: Augmenter | None = None
        self.previous = None
        if history is not None and "aug_error" in history.column_names and "aug_key" in history.column_names:
            ok = history.filter(pc.is_null(history.column("aug_error")))
            # one row per key (two versions may hold the same generation)
            first = pc.index_in(pc.unique(ok.column("aug_key")), value_set=ok.column("aug_key"))
            self.previous = ok.take(first)

    def __call__(self, batch: pa.Table) -> pa.Table:
        check_input(batch)
        if self.previous is None or self.previous.num_rows == 0:
            return self._generate(batch)
        keys = aug_keys(batch, self.params)
        at = pc.index_in(keys, value_set=self.previous.column("aug_key"))
        hit = pc.is_valid(at)
        if not pc.any(hit).as_py():
            return self._generate(batch)
        reused_rows = pc.filter(pa.array(range(batch.num_rows), pa.int64()), hit)
        carried = self.previous.take(pc.filter(at, hit))
        reused = batch.filter(hit)
        for field in AUG_SCHEMA:
            if field.name in reused.column_names:  # re-augmenting augmented rows: the generation's values win
                reused = reused.drop_columns([field.name])
            column = reused.column("doc_id").cast(pa.string()) if field.name == "aug_source_id" else None
            if column is None:
                column = carried.column(field.name).cast(field.type) if field.name in carried.column_names \
                    else pa.nulls(reused.num_rows, field.type)
            reused = reused.append_column(field, column)
        todo_rows = pc.filter(pa.array(range(batch.num_rows), pa.int64()), pc.invert(hit))
        parts, order = [reused], [reused_rows]
        if len(todo_rows):
            parts.append(self._generate(batch.take(todo_rows)))
            order.append(todo_rows)
        out = pa.concat_tables(parts, promote_options="permissive")
        # back into the batch's order: row i of the output is row i of the input
        return out.take(pc.sort_indices(pa.concat_arrays(order)))

    def _generate(self, batch: pa.Table) -> pa.Table:
        if self.inner is None:
            self.inner = Augmenter(self.params)
        return self.inner(batch)
