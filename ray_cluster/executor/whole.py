"""The ``global`` kind: ``fn(tables, params, ctx)`` over whole small tables on one worker, with side outputs
committed as siblings and ``ctx.checkpoint`` for per-level/per-step resume (k-means, sampling, packing, training,
evaluation). ``global`` is a Python keyword, hence the module's name."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa

from ray_cluster import progress, runtime
from ray_cluster.executor import core
from storage import datasets
from storage.datasets import DatasetRef, StorageError


class Checkpoint:
    """Per-step checkpoints of a global stage: step ``s`` of each named table is shard ``part-{s:05d}`` of that
    sibling version. A step is complete when every name has its shard (saved in order: the last one completes it)."""

    def __init__(self, dst: DatasetRef, names: Sequence[str]):
        self.dst, self.names = dst, list(names)

    def load(self) -> list[dict[str, pa.Table]]:
        have = {n: datasets.existing_shards(self.dst.sibling(n)) for n in self.names}
        steps, s = [], 1
        while all(datasets.shard_name(s) in have[n] for n in self.names):
            steps.append({n: datasets.read_shard(self.dst.sibling(n), datasets.shard_name(s)) for n in self.names})
            s += 1
        return steps

    def save(self, step: int, tables: dict[str, pa.Table]) -> None:
        for n in self.names:
            datasets.write_shard(self.dst.sibling(n), datasets.shard_name(step), tables[n])


@dataclasses.dataclass
class Context:
    """What a global stage may ask of the executor (never storage itself)."""

    dst: DatasetRef
    roles: dict[str, DatasetRef]
    checkpoint: Checkpoint | None
    resources: runtime.StageResources
    profile: runtime.Profile

    @property
    def local_dir(self) -> Path:
        """The version folder on a local/mounted filesystem (memory-mapped arrays, checkpoints, model files)."""
        return local_dir(self.dst)

    def input_dir(self, role: str) -> Path:
        return local_dir(self.roles[role])

    def input_manifest(self, role: str) -> dict:
        return datasets.read_manifest(self.roles[role])

    def input_ref(self, role: str) -> str:
        return str(self.roles[role])

    def distributed(self, loop: Callable[[dict], dict], config: dict) -> dict:
        """Run a training loop on the profile's workers (Ray Train's TorchTrainer), or in-process off Ray."""
        from ray_cluster.train import fit

        return fit(loop, config, self.resources, self.profile)


def local_dir(ref: DatasetRef) -> Path:
    """Stages that memory-map arrays or write checkpoints need a local or mounted storage root."""
    fs, path = datasets.filesystem(ref.uri)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol not in ("file", "local"):
        raise StorageError(f"{ref} is on {protocol}://; this stage needs a local or mounted storage root")
    return Path(path)


def run(stage, kind, inputs, params, profile, fail_from_shard, target) -> DatasetRef:
    present, roles, dst, committed = core._prepare(stage, inputs, params, profile, target)
    if committed:
        return dst
    res = core.resources(stage, profile)
    t0 = time.perf_counter()
    args = (stage, core._asdict(dst), {r: core._asdict(v) for r, v in roles.items()}, params, res, profile)
    # the stage's own progress lines (a training step, a k-means iteration) reach the driver's log from any worker
    with progress.relaying(f"{dst}/{os.getpid()}", stage.name):
        if stage.driver:
            stats, expected = _global_work(*args)
        else:  # in-process off Ray
            stats, expected = runtime.run_remote(progress.forwarding(_global_work), *args, resources=res,
                                                 profile=profile)
    stats = {**(stats or {}), "seconds": round(time.perf_counter() - t0, 3)}
    for side in [*stage.checkpoints, *stage.outputs]:  # siblings first: the main manifest commits the stage
        if datasets.existing_shards(dst.sibling(side)):
            core._commit(stage, dst.sibling(side), present, params, {})
    core._commit(stage, dst, present, params, stats, expected=expected)
    return dst


def _global_work(stage, dst: dict, roles: dict, params, res, profile) -> tuple[dict, dict[str, int]]:
    """Worker: read the inputs (projected to the stage's columns), run the stage, write its outputs."""
    dst_ref = DatasetRef(**dst)
    refs = {r: DatasetRef(**v) for r, v in roles.items()}
    tables = {}
    for r, ref in refs.items():
        cols = (stage.columns or {}).get(r, ())
        if cols is not None:  # None: the stage reads this input through ctx (a model folder, packed arrays)
            tables[r] = datasets.read_table(ref, columns=list(cols) or None)
    ckpt = Checkpoint(dst_ref, stage.checkpoints) if stage.checkpoints else None
    out = stage.fn(tables, params, Context(dst_ref, refs, ckpt, res, profile))
    stats = {}
    if isinstance(out, tuple):
        out, stats = out
    if isinstance(out, pa.Table):
        out = {stage.name: out}
    expected = {}
    for name, table in out.items():
        ref = dst_ref if name == stage.name else dst_ref.sibling(name)
        datasets.write_shards(ref, table)
        if name == stage.name:
            expected = {datasets.shard_name(i): len(s) for i, s in enumerate(_slices(table))}
    return stats, expected


def _slices(table: pa.Table, per: int = 100_000) -> list[pa.Table]:
    return [table.slice(i * per, per) for i in range(max(1, -(-table.num_rows // per)))]
