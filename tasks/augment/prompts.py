"""The TPT prompt: versioned template files (templates/tpt_*.txt: the paper's template verbatim, and the "random
focus" ablation), the document filled in, its truncation to the teacher's tokenizer, and the per-document seed.

Takes no AugmentParams on purpose: params.py validates a template name through `load_template` here, so this module
sits below it (rows.py builds the chat messages from the params).
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from pathlib import Path

from tasks.common.assets import SMOLLM2, load_tokenizer

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
CONTEXT_SLOT = "{{CONTEXT}}"  # the paper's placeholder (replaced literally: documents contain braces)
FOCUS_MARKER = "<<<READING HERE>>>"  # TPT "random focus" ablation
_TEMPLATE_ID = re.compile(r"^tpt_[a-z0-9_]+_v\d+$")


@functools.lru_cache(maxsize=16)
def load_template(template_id: str) -> str:
    """Template text of tasks/augment/templates/<template_id>.txt (a trailing newline, if an editor added one, is dropped)."""
    if not _TEMPLATE_ID.match(template_id):
        raise ValueError(f"template id must look like tpt_<name>_v<N>, got {template_id!r}")
    path = TEMPLATES_DIR / f"{template_id}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in TEMPLATES_DIR.glob("tpt_*.txt"))
        raise ValueError(f"unknown template {template_id!r}; known: {known}")
    text = path.read_text(encoding="utf-8").rstrip("\n")
    if text.count(CONTEXT_SLOT) != 1:
        raise ValueError(f"template {template_id!r} must contain {CONTEXT_SLOT} exactly once")
    return text


def template_sha(template_id: str) -> str:
    """Short content hash of a template, recorded so an edited file cannot pass for the same version."""
    return hashlib.sha256(load_template(template_id).encode()).hexdigest()[:12]


def doc_seed(seed: int, doc_id: str) -> int:
    """Per-document seed from (stage seed, doc_id): independent of batch composition and order."""
    return int(hashlib.sha256(f"{seed}:{doc_id}".encode()).hexdigest()[:8], 16) & 0x7FFF_FFFF


def build_prompt(document: str, template_id: str, *, seed: int = 0) -> str:
    """The template with the document in place of {{CONTEXT}}; a focus template also gets the marker inserted
    into the document at a seeded random character position (TPT ablation)."""
    template = load_template(template_id)
    if FOCUS_MARKER in template:
        pos = random.Random(seed).randint(0, len(document))
        document = document[:pos] + FOCUS_MARKER + document[pos:]
    return template.replace(CONTEXT_SLOT, document)


def truncate_document(text: str, tokenizer, max_tokens: int) -> tuple[str, int, bool]:
    """(prefix of `text` of at most max_tokens tokens, its token count, whether it was cut).

    Cuts at the character offset of the last kept token, so the result is an exact prefix of the original text
    (decoding a token prefix can differ, e.g. a split multi-byte character)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=getattr(tokenizer, "is_fast", False))
    ids = enc["input_ids"]
    if len(ids) <= max_tokens:
        return text, len(ids), False
    if "offset_mapping" in enc:
        return text[: enc["offset_mapping"][max_tokens - 1][1]], max_tokens, True
    return tokenizer.decode(ids[:max_tokens]), max_tokens, True


@functools.lru_cache(maxsize=4)
def load_truncation_tokenizer(name: str):
    """Tokenizer by name ("smollm2", a local dir or an HF id), once per process (vLLM pre-process workers too)."""
    if name == SMOLLM2:
        return load_tokenizer(SMOLLM2)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)
