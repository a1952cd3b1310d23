"""A writable home for numba's compiled-kernel cache, chosen before the kernel modules are decorated.

Every kernel is ``@njit(cache=True)``: a fresh Ray worker then loads machine code from disk instead of compiling
for tens of seconds (``benchmarks/scale.py`` prints both: 21 s cold vs 4 s cached in its 200k run here). Numba
looks for a cache folder in order ``$NUMBA_CACHE_DIR``, ``__pycache__`` beside the source, the user cache
(``$XDG_CACHE_HOME/numba`` or ``~/.cache/numba``) and raises ``RuntimeError("cannot cache function ...")`` at import
when none is writable: a worker image with read-only code and no writable home would die on import. Then this
points ``NUMBA_CACHE_DIR`` at a per-user folder under the temporary directory, shared by the node's workers.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


def _writable(folder: Path) -> bool:
    """What numba itself checks (``_CacheLocator.ensure_cache_path``): the folder can be made and written into."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
        return True
    except OSError:
        return False


def cache_dir(source_dir: Path, env: dict[str, str], writable: Callable[[Path], bool] = _writable) -> str | None:
    """The ``NUMBA_CACHE_DIR`` to set, or None when numba's own search finds a writable folder."""
    if env.get("NUMBA_CACHE_DIR"):
        return None
    user = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path(env.get("HOME", "~")).expanduser() / ".cache"
    if writable(source_dir / "__pycache__") or writable(user / "numba"):
        return None
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return str(Path(env.get("TMPDIR") or tempfile.gettempdir()) / f"quarry-numba-cache-{uid}")


def ensure() -> None:
    """Set ``NUMBA_CACHE_DIR`` when needed (and make numba re-read it if it was imported already)."""
    chosen = cache_dir(Path(__file__).resolve().parent, dict(os.environ))
    if chosen is None:
        return
    os.environ["NUMBA_CACHE_DIR"] = chosen
    config = sys.modules.get("numba.core.config")
    if config is not None:
        config.reload_config()
