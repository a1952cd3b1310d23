"""Slurm launcher: one sbatch allocation runs a Ray cluster (head on the first node, a worker on each other node)
and one quarry flow against it.

    quarry slurm submit curate datasets_cfg/tiny.yaml --nodes 4 --partition cpu --time 02:00:00
    quarry slurm submit curate datasets_cfg/tiny.yaml --nodes 2 --dry-run      # print the sbatch script only
    quarry slurm status 1234

``render`` fills ``quarry.sbatch`` (the batch script: ports, token, head, workers by srun, wait for them, the flow,
a TERM/EXIT trap that stops everything); ``ray_node.sh`` runs one Ray node in its own process group. ``submit``
pipes the script to ``sbatch --parsable``. Only the standard library is imported here: ``wait-nodes`` (below) runs
inside the job before the flow.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TEMPLATE = HERE / "quarry.sbatch"
_SLOT = re.compile(r"\{\{(\w+)\}\}")
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # sbatch --time: minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]


class SlurmError(RuntimeError):
    """A submission that cannot work as asked, or a Slurm command that failed; the message is one line."""


def render(flow: str, recipe: str | Path, *, nodes: int = 1, cpus_per_task: int | None = None,
           partition: str | None = None, time_limit: str | None = None, root: str | None = None,
           profile: str = "cluster", python: str | None = None, job_name: str | None = None,
           output: str | None = None, ray_start_args: str = "", join_timeout_s: int = 300) -> str:
    """The sbatch script for one flow on ``nodes`` nodes. The recipe must be readable on every node (absolute path
    on a shared file system); a relative ``root`` is made absolute here, an object store (``s3://``) is kept."""
    if nodes < 1:
        raise SlurmError(f"--nodes must be at least 1, got {nodes}")
    if cpus_per_task is not None and cpus_per_task < 1:
        raise SlurmError(f"--cpus-per-task must be at least 1, got {cpus_per_task}")
    if time_limit is not None and not _TIME.match(time_limit):
        raise SlurmError(f"--time {time_limit!r} is no Slurm time (minutes, HH:MM:SS or D-HH:MM:SS)")
    recipe = Path(recipe).resolve()
    if not recipe.is_file():
        raise SlurmError(f"recipe {recipe} does not exist (the job reads it at this path on every node)")
    if root and "://" not in root:
        root = str(Path(root).resolve())
    try:
        extra = shlex.split(ray_start_args)
    except ValueError as e:
        raise SlurmError(f"--ray-start-args {ray_start_args!r}: {e}") from None
    name = job_name or f"quarry-{flow}-{recipe.stem}"
    options = [f"--job-name={name}", f"--nodes={nodes}", "--ntasks-per-node=1",
               f"--output={output or 'slurm-%j.out'}"]
    options += [f"--cpus-per-task={cpus_per_task}"] if cpus_per_task else []
    options += [f"--partition={partition}"] if partition else []
    options += [f"--time={time_limit}"] if time_limit else []
    for opt in options:  # a newline would end the #SBATCH block and run the rest as shell
        if "\n" in opt or "\r" in opt:
            raise SlurmError(f"sbatch option {opt!r} holds a line break")
    values = {
        "sbatch_options": "\n".join(f"#SBATCH {shlex.quote(o)}" for o in options),
        "repo": shlex.quote(str(REPO)),
        "python": shlex.quote(python or sys.executable),
        "flow": shlex.quote(flow),
        "recipe": shlex.quote(str(recipe)),
        "nodes": str(nodes),
        "join_timeout_s": str(int(join_timeout_s)),
        "ray_start_args": " ".join(shlex.quote(a) for a in extra),
        "profile": shlex.quote(profile),
        "root_export": f"export QUARRY_ROOT={shlex.quote(root)}" if root else "# storage root: the recipe's",
    }
    text = TEMPLATE.read_text()
    missing = sorted(set(_SLOT.findall(text)) - set(values))
    if missing:  # a template slot nobody fills would reach bash as literal braces
        raise SlurmError(f"{TEMPLATE}: no value for {', '.join(missing)}")
    return _SLOT.sub(lambda m: values[m.group(1)], text)


def _slurm(args: list[str], *, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(args, input=stdin, capture_output=True, text=True, env=env, timeout=60)
    except FileNotFoundError:
        raise SlurmError(f"{args[0]} not found: run this on a Slurm login node (Debian: apt-get install slurm-client)"
                         ) from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{args[0]} did not answer in 60 s: is slurmctld up (sinfo)?") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise SlurmError(f"{' '.join(args[:2])} failed: {last}")
    return proc.stdout


def submit(script: str, *, env: dict[str, str] | None = None) -> str:
    """Submit a rendered script (``sbatch --parsable``, the script on stdin); returns the job id. The job inherits
    this environment (sbatch's default --export=ALL), e.g. PREFECT_API_URL and object-store credentials."""
    out = _slurm(["sbatch", "--parsable"], stdin=script, env=env).strip()
    return out.split(";")[0]  # "<id>" or "<id>;<cluster>"


def status(job_id: str, *, env: dict[str, str] | None = None) -> dict[str, str]:
    """``scontrol show job -o`` as a dict (JobState, RunTime, NodeList, StdOut, ExitCode, ...; no accounting
    database needed). Slurm forgets a finished job after MinJobAge (300 s by default)."""
    out = _slurm(["scontrol", "show", "job", "-o", str(job_id)], env=env)
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_nodes(address: str, nodes: int, timeout_s: float) -> int:
    """Inside the job: block until ``nodes`` Ray nodes are alive at ``address`` (exit 0), or say who is missing."""
    import socket

    deadline = time.monotonic() + timeout_s
    host, _, port = address.rpartition(":")
    while True:  # the head may still be starting: wait for its GCS port before Ray's client logs a retry a second
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                print(f"quarry-slurm: no Ray head listening at {address} after {timeout_s:.0f} s", file=sys.stderr)
                return 1
            time.sleep(0.5)
    import ray

    while True:  # a head that missed Ray's start-up deadline is started again by ray_node.sh: join it then
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
            break
        except Exception as e:  # noqa: BLE001 - retried until the deadline, then one line, not Ray's traceback
            if time.monotonic() > deadline:
                print(f"quarry-slurm: cannot join the Ray head at {address}: {type(e).__name__}: {e}", file=sys.stderr)
                return 1
            time.sleep(2)
    try:
        while True:
            alive = [n for n in ray.nodes() if n.get("Alive")]
            if len(alive) >= nodes:
                cpus = sum(n.get("Resources", {}).get("CPU", 0) for n in alive)
                print(f"quarry-slurm: {len(alive)}/{nodes} Ray nodes joined ({cpus:g} CPUs)", flush=True)
                return 0
            if time.monotonic() > deadline:
                print(f"quarry-slurm: only {len(alive)} of {nodes} Ray nodes joined in {timeout_s:.0f} s "
                      "(see the workers' lines above)", file=sys.stderr)
                return 1
            time.sleep(0.5)
    finally:
        ray.shutdown()


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "wait-nodes":
        timeout = float(argv[argv.index("--timeout") + 1]) if "--timeout" in argv else 300.0
        return wait_nodes(argv[1], int(argv[2]), timeout)
    print("usage: python -m ray_cluster.slurm wait-nodes <address> <nodes> [--timeout S]", file=sys.stderr)
    return 2

