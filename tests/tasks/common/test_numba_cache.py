"""Where the numba kernel cache goes: numba's own folders when writable, else a per-user temporary folder (numba
raises at import when it finds no writable cache folder, which would kill every worker of a read-only image)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tasks.common import numba_cache as _numba_cache
from tests.conftest import REPO


def test_numba_s_own_folders_win_when_writable(tmp_path):
    env = {"HOME": str(tmp_path / "home")}
    assert _numba_cache.cache_dir(tmp_path / "src", env) is None  # __pycache__ beside the source is writable
    assert _numba_cache.cache_dir(tmp_path / "src", {**env, "NUMBA_CACHE_DIR": "/x"}) is None  # the user's choice


def test_read_only_code_and_home_get_a_temporary_cache_folder(tmp_path):
    src, home = tmp_path / "src", tmp_path / "home"
    read_only = {src / "__pycache__", home / ".cache" / "numba"}
    chosen = _numba_cache.cache_dir(src, {"HOME": str(home), "TMPDIR": str(tmp_path / "t")},
                                    writable=lambda p: p not in read_only)
    assert chosen == str(tmp_path / "t" / f"quarry-numba-cache-{os.getuid()}")
    # a writable user cache (XDG_CACHE_HOME) is numba's third choice: nothing to set
    xdg = _numba_cache.cache_dir(src, {"HOME": str(home), "XDG_CACHE_HOME": str(tmp_path / "xdg")},
                                 writable=lambda p: p not in read_only)
    assert xdg is None


def test_a_fresh_process_with_a_warm_cache_compiles_nothing(tmp_path):
    """Kernels compiled once into NUMBA_CACHE_DIR are loaded, not recompiled, by the next fresh process: numba's
    cache index files (.nbi) and compiled objects (.nbc) appear the first time and are unchanged the second."""
    code = (
        "import pyarrow as pa\n"
        "from tasks.dedup.minhash import MinhashSignaturesParams, minhash_signatures\n"
        "t = pa.table({'doc_id': ['a', 'b'], 'text': ['one two three four five six seven eight nine ten eleven "
        "twelve thirteen fourteen', 'x']})\n"
        "print(minhash_signatures(t, MinhashSignaturesParams()).num_rows)\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}

    def run() -> dict[Path, int]:
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.strip() == "2", out.stderr[-2000:]
        return {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.nb[ic]")}

    first = run()
    assert any(p.suffix == ".nbc" for p in first) and any(p.suffix == ".nbi" for p in first)
    assert run() == first  # loaded from the cache: no kernel was compiled (and rewritten) again


def test_char_table_disk_cache_equals_the_computed_table(tmp_path, monkeypatch):
    """The RPv2 character classes are kept on disk for fresh workers: the cached file must be the computed table,
    and a torn or foreign file must be recomputed, never trusted."""
    import numpy as np

    from tasks.signals import rpv2_chars as Q

    monkeypatch.setenv("QUARRY_CACHE", str(tmp_path))
    Q.char_table.cache_clear()
    try:
        first = Q.char_table()
        files = list((tmp_path / "rpv2").glob("chars-*.npy"))
        assert len(files) == 1 and not list((tmp_path / "rpv2").glob(".*tmp"))
        expected = Q.compute_char_table()
        assert np.array_equal(first, expected)
        Q.char_table.cache_clear()
        assert np.array_equal(Q.char_table(), expected)  # read back from disk
        files[0].write_bytes(b"\x93NUMPY torn")  # a torn file: recomputed (and rewritten)
        Q.char_table.cache_clear()
        assert np.array_equal(Q.char_table(), expected)
        assert np.array_equal(np.load(files[0]), expected)
    finally:
        Q.char_table.cache_clear()
