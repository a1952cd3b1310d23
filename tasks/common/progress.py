"""Progress lines from inside a long stage (training steps, k-means iterations, evaluation examples).

A stage logs on the ``quarry`` logger; the executor carries those lines from a Ray worker to the driver, where they
reach the console, a Ray Job's log and Prefect's run logs (ray_cluster/progress.py). ``Ticker`` keeps the cadence
steady: a line every ``$QUARRY_PROGRESS_LOG_S`` seconds (10), and always at a step boundary the caller forces.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("quarry")


def every_s() -> float:
    try:
        return max(0.0, float(os.environ.get("QUARRY_PROGRESS_LOG_S", "10")))
    except ValueError:
        return 10.0


class Ticker:
    """``line(text, force=...)`` logs at most every ``every_s()`` seconds, and whenever ``force`` is true."""

    def __init__(self, every: float | None = None):
        self.every = every_s() if every is None else every
        self.start = self.last = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def eta(self, done: float, total: float) -> str:
        """``, about N s left`` from the rate so far (empty before the first unit of work or after the last)."""
        if not 0 < done < total:
            return ""
        return f", about {self.elapsed() / done * (total - done):.0f} s left"

    def line(self, text: str, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return False
        self.last = now
        if log.getEffectiveLevel() > logging.INFO and not log.handlers:
            log.setLevel(logging.INFO)  # a bare process (a worker, a script) would drop INFO at the root's WARNING
        log.info(text)
        return True
