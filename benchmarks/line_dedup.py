"""Line dedup throughput: quarry's line_dedup (CCNet) vs datatrove's SentenceDedup in its line mode
(``split_sentences=False, n_sentences=1``), one core, same documents. See benchmarks/sentence_dedup.py.

    python benchmarks/line_dedup.py [--docs FILE ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sentence_dedup import main  # noqa: E402

if __name__ == "__main__":
    main(mode="line")
