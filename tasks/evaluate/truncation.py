"""Which harness examples did not fit the model's context.

lm-evaluation-harness scores a log-likelihood request on ``(context + continuation)[-(max_length + 1):]``
(HFLM._loglikelihood_tokens): a prompt longer than the model's context is silently cut from the left, so the model
answers a question it never saw in full (21 of 180 requests in the tiny demo, seq_len 64). ``watch(lm)`` counts,
per task, the examples with at least one such request, using the harness's own tokenization of each request
(``_encode_pair``; an empty context is the prefix token, as ``LM.loglikelihood`` does).
"""

from __future__ import annotations

import logging

log = logging.getLogger("quarry")


def encoded_length(lm, context: str, continuation: str) -> int:
    """The tokens lm-eval feeds for one request before its left truncation (context + continuation)."""
    if context == "":
        cont = lm.tok_encode(continuation, add_special_tokens=False)
        return len(cont) + (1 if not cont or lm.prefix_token_id != cont[0] else 0)
    ctx, cont = lm._encode_pair(context, continuation)
    return len(ctx) + len(cont)


def watch(lm) -> dict[str, set]:
    """Wrap ``lm.loglikelihood``: returns {task: {doc_id of every example with a truncated request}}, filled as the
    harness scores (rolling log-likelihoods slide windows and never truncate, so they are not wrapped)."""
    truncated: dict[str, set] = {}
    scored = lm.loglikelihood

    def loglikelihood(requests, *args, **kwargs):
        limit = lm.max_length + 1
        for r in requests:
            task = r.task_name.removeprefix("quarry_")
            truncated.setdefault(task, set())
            if encoded_length(lm, *r.args[:2]) > limit:
                truncated[task].add(r.doc_id)
        return scored(requests, *args, **kwargs)

    lm.loglikelihood = loglikelihood
    return truncated


def counts(truncated: dict[str, set], max_length: int) -> dict[str, int]:
    """{task: examples truncated}; a warning per task that has any (the scores of those examples are of a cut
    prompt: raise the model's context, shorten the prompts or limit num_fewshot)."""
    out = {task: len(docs) for task, docs in sorted(truncated.items())}
    for task, n in out.items():
        if n:
            log.warning(f"evaluate: task {task}: {n} example(s) exceed the model's context of {max_length} tokens "
                        "and were scored on a left-truncated prompt (column n_truncated of the evaluate table)")
    return out
