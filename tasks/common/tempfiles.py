"""Plain files stages write outside versions: the per-user cache root, and per-writer temporaries.

Temporaries (packed token arrays, checkpoints, metrics, cached tables) are ``.{name}.{pid}.tmp``, renamed into place
when complete. A resumed run removes those whose writer is gone; a live writer's are left alone (two runs of one
stage may overlap)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$QUARRY_CACHE`` or ``~/.cache/quarry``: models, tokenizers, eval indexes, the RPv2 character table."""
    return Path(os.environ.get("QUARRY_CACHE") or Path.home() / ".cache" / "quarry")


def tmp_path(final: Path) -> Path:
    """The temporary this process writes before renaming it to ``final``."""
    return final.with_name(f".{final.name}.{os.getpid()}.tmp")


def alive(pid: int) -> bool:
    """Whether a process runs (a killed child its parent has not reaped yet, a zombie, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):  # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True


def clean_abandoned(folder: Path) -> None:
    """Remove temporaries (``*.{pid}.tmp``) whose writer is gone: a killed run left them; a live one still writes."""
    if not folder.is_dir():
        return
    for f in folder.glob("*.tmp"):
        pid = f.name.rsplit(".", 2)[-2]
        if not (pid.isdigit() and alive(int(pid))) or int(pid) == os.getpid():
            f.unlink(missing_ok=True)
