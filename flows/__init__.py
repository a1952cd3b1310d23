"""Prefect flows: composition only. Each flow is a short sequence of registry stages (tasks/registry.py) run by
the executor (ray_cluster/executor/); the executor logs through the ``quarry`` logger, which Prefect captures."""

import os

os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "quarry")
