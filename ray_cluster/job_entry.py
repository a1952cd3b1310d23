"""A Ray Job's entrypoint: check that the job's Python can run quarry, then run the CLI.

    python -m ray_cluster.job_entry run curate datasets_cfg/tiny.yaml    # = python quarry_cli.py run ...

A head started outside quarry's environment runs a job's entrypoint on whatever ``python`` its PATH gives; without
this check the job dies in a long traceback ending in ``ModuleNotFoundError: No module named 'typer'``. Only the
standard library is imported before the check.
"""

from __future__ import annotations

import importlib.util
import json
import os
import runpy
import sys
from pathlib import Path

# what the CLI and every flow import first; one missing means this is not quarry's environment
REQUIRED = ("typer", "prefect", "pyarrow", "duckdb", "ray", "yaml", "pydantic")
EXIT_WRONG_PYTHON = 3


def missing_modules() -> list[str]:
    return [m for m in REQUIRED if importlib.util.find_spec(m) is None]


def main(argv: list[str]) -> int:
    gone = missing_modules()
    if gone:
        print(
            f"quarry: the job's Python ({sys.executable}) lacks {', '.join(gone)}: start the Ray head and workers "
            "from quarry's environment (e.g. .venv/bin/ray start --head), or submit with --python naming a Python "
            "that has quarry's dependencies on every node",
            file=sys.stderr,
        )
        return EXIT_WRONG_PYTHON
    cli = Path.cwd() / "quarry_cli.py"  # the job's working_dir is a copy of the checkout
    sys.argv = [str(cli), *argv]
    job_id = json.loads(os.environ.get("QUARRY_RUN_CONTEXT") or "{}").get("ray_job_id")
    code = 0
    try:
        import prefect

        # every Prefect run the job makes carries the Ray submission id: the Prefect UI filters by it
        with prefect.tags(*([f"ray-job:{job_id}"] if job_id else [])):
            runpy.run_path(str(cli), run_name="__main__")
    except SystemExit as e:  # typer ends with sys.exit: the last line comes after it
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    root = os.environ.get("QUARRY_JOB_ROOT") or os.environ.get("QUARRY_ROOT")
    if root:  # the job's last line: where its data is, for the commands that open it
        verdict = "finished" if code == 0 else f"failed (exit {code})"
        print(f"quarry: job {job_id or ''} {verdict}; its data is under --root {root} "
              f"(quarry datasets --root {root})", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
