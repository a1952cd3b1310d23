"""Prompt functions for the local eval files (copied beside the generated task YAMLs; lm-eval's `!function` loads them).

Formats (see ../shared/data/eval/*/SOURCE.txt):
  gauntlet/*.jsonl  MosaicML ICL format: {query, choices, gold}; winogrande {context_options, continuation, gold}
  hellaswag         original rowanz format: {activity_label, ctx_a, ctx_b, endings, label}
  mmlu/*/*.csv      header question,choice0..choice3,answer (answer = 0-3)
"""

import re


def qa_text(doc: dict) -> str:
    """'Question: ...' / 'Passage: ...\\nQuestion: ...' queries get the harness's '\\nAnswer:' cue (lm-eval arc/piqa/boolq)."""
    return doc["query"].strip() + "\nAnswer:"


def winogrande_gold(doc: dict) -> int:
    """Partial scoring (Trinh & Le 2018, as lm-eval): the gold index selects among contexts, the continuation is scored."""
    return int(doc["gold"])


def _hellaswag_clean(text: str) -> str:
    # WikiHow artifacts in brackets, as lm-eval's hellaswag preprocess.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_docs(dataset):
    def one(doc):
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        return {
            "query": _hellaswag_clean(doc["activity_label"] + ": " + ctx),
            "choices": [_hellaswag_clean(e) for e in doc["endings"]],
            "gold": int(doc["label"]),
        }

    return dataset.map(one)


def mmlu_text(doc: dict) -> str:
    """The MMLU prompt of Hendrycks et al. 2021 / lm-eval: question, lettered choices, 'Answer:'."""
    lines = [str(doc["question"]).strip()]
    lines += [f"{letter}. {str(doc[f'choice{i}']).strip()}" for i, letter in enumerate("ABCD")]
    return "\n".join(lines) + "\nAnswer:"


def mmlu_gold(doc: dict) -> int:
    return int(doc["answer"])
