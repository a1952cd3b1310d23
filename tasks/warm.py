"""Compile every numba kernel the curation stages call into the cache: `make setup` runs ``python -m tasks.warm``.

Above the families (like the registry), so the kernel modules import the cache helper and never the reverse.
"""

from __future__ import annotations

import os

from tasks.common import numba_cache  # noqa: F401  (chooses the cache folder before the kernels are decorated)
from tasks.dedup import minhash
from tasks.signals import quality_signals


def warm() -> dict[str, float]:
    """Compile every kernel the curation stages call into the cache (and write the RPv2 character table), so the
    first run after set-up pays no JIT in its workers: `make setup` runs this. Returns seconds per step."""
    import time

    import pyarrow as pa

    batch = pa.table({"text": ["Warm the kernels. A second sentence, with words!\nAnd a line.", "", None]})
    out = {}
    for name, call in (("quality_signals", lambda: quality_signals.quality_signals(batch, quality_signals.QualitySignalsParams())),
                       ("minhash_signatures", lambda: minhash.minhash_signatures(batch))):
        t0 = time.perf_counter()
        call()
        out[name] = round(time.perf_counter() - t0, 2)
    return out


if __name__ == "__main__":
    print(f"numba kernels cached ({os.environ.get('NUMBA_CACHE_DIR') or 'beside the code'}): {warm()} s")
