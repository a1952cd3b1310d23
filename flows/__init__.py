"""Prefect flows: composition only. Each flow is a short sequence of registry stages (tasks/registry.py) run by
the executor (ray_cluster/executor/); the executor logs through the ``quarry`` logger, which Prefect captures."""

import os

os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "quarry")

from services import logs  # noqa: E402 - after the logging environment above

logs.quiet()  # a log file without colour codes, no known-benign warnings, no progress bars in Prefect logs
