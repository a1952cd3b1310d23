"""Committed data proves itself: each file a manifest lists is checked against the size and xxhash64 recorded when
it was written (storage/datasets.py computes them in the write, with no second read).

* ``verify_version(ref)``: every problem of one committed version (missing file, size, checksum, unreadable footer,
  row count), each naming the file and what differs. ``full=False`` is the cheap open-time check (stat + footer).
* ``verify_root(root, selector)``: the same over ``dataset[/stage[/version]]`` (``quarry verify``), plus, for a
  layer, ``layers.verify_alignment`` (does it still line up with the rows below it).
* ``reject(ref, problems)``: make a version that failed verification recomputable: its manifest is moved aside
  (``_manifest.json.rejected-<time>``, kept for a post-mortem) and the checksum markers of its bad files withdrawn,
  so the stage's next run rewrites exactly those files and commits again. Nothing is deleted.
* ``check_resume(ref)``: before a stage resumes an uncommitted version, re-hash the shards an earlier attempt left,
  withdrawing the marker of any whose bytes no longer match (the resume then rewrites it, naming it).

Older manifests (no ``bytes``/``xxh64``) still verify what they can: presence, footer and row counts.
"""

from __future__ import annotations

import datetime as _dt
import logging
import posixpath
from dataclasses import dataclass

import pyarrow.parquet as pq
import xxhash

from storage import datasets
from storage.datasets import MANIFEST, DatasetRef

log = logging.getLogger("quarry")
CHUNK = 8 * 2**20  # read size for the full checksum: large sequential reads, bounded memory


@dataclass(frozen=True)
class Problem:
    """One bad file of a version: ``kind`` is missing | size | checksum | footer | rows | manifest | alignment."""

    ref: str
    name: str
    uri: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.uri}: {self.kind}: {self.detail}"


def file_checksum(uri: str) -> tuple[int, str]:
    """(bytes, xxh64 hex) of a file, read once in CHUNK-sized pieces."""
    fs, path = datasets.filesystem(uri)
    h, n = xxhash.xxh64(), 0
    with fs.open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def check_file(ref: DatasetRef, entry: dict, *, full: bool = True) -> Problem | None:
    """The first problem of one manifest entry's file, or None: presence and size (stat), then the checksum (full),
    then the footer and its row count."""
    name = entry["name"]
    uri = datasets.shard_uri(ref, name)

    def problem(kind: str, detail: str) -> Problem:
        return Problem(str(ref), name, uri, kind, detail)

    fs, path = datasets.filesystem(uri)
    try:
        size = fs.size(path)
    except FileNotFoundError:
        return problem("missing", "listed in the manifest, not on storage")
    want = entry.get("bytes")
    if want is not None and size != want:
        return problem("size", f"{size} bytes, the manifest says {want}")
    if full and entry.get("xxh64"):
        _, digest = file_checksum(uri)
        if digest != entry["xxh64"]:
            return problem("checksum", f"xxh64 {digest}, the manifest says {entry['xxh64']}")
    try:
        with fs.open(path, "rb") as f:
            if entry.get("footer_xxh64") and datasets.footer_digest(f, size) != entry["footer_xxh64"]:
                return problem("footer", "footer checksum differs from the manifest's")
            f.seek(0)
            rows = pq.ParquetFile(f).metadata.num_rows
    except Exception as e:
        return problem("footer", f"unreadable Parquet footer ({type(e).__name__}: {e})")
    if entry.get("rows") is not None and rows != entry["rows"]:
        return problem("rows", f"{rows} rows, the manifest says {entry['rows']}")
    return None


def verify_version(ref: DatasetRef, *, full: bool = True) -> list[Problem]:
    """Every problem of one committed version (an empty list: each listed file is there, whole, as written)."""
    try:
        manifest = datasets.read_manifest(ref)
    except FileNotFoundError:
        return [Problem(str(ref), MANIFEST, datasets.manifest_uri(ref), "missing", "no manifest: not committed")]
    except ValueError as e:  # JSONDecodeError
        return [Problem(str(ref), MANIFEST, datasets.manifest_uri(ref), "manifest", f"unreadable: {e}")]
    out = []
    for entry in manifest.get("files", []):
        p = check_file(ref, entry, full=full)
        if p is not None:
            out.append(p)
    return out


def select(root: str, selector: str | None = None) -> list[DatasetRef]:
    """The committed versions under ``root`` that ``dataset[/stage[/version-prefix]]`` names (None: all)."""
    parts = [p for p in (selector or "").strip("/").split("/") if p]
    if len(parts) > 3:
        raise ValueError(f"{selector!r} is not dataset[/stage[/version]]")
    refs = []
    for m in datasets.iter_manifests(root):
        key = (m["dataset"], m["stage"], m["version"])
        if all(key[i] == p if i < 2 else key[i].startswith(p) for i, p in enumerate(parts)):
            refs.append(DatasetRef(root, *key))
    return sorted(refs, key=str)


def verify_root(root: str, selector: str | None = None, *, full: bool = True) -> tuple[list[DatasetRef], list[Problem]]:
    """(versions checked, problems found) for ``quarry verify``: each version's files, and for a layer whether it
    still lines up with the rows below it (``layers.verify_alignment``; doc_id hashes only when ``full``)."""
    refs = select(root, selector)
    problems = []
    for ref in refs:
        own = verify_version(ref, full=full)
        problems += own
        if not own and datasets.read_manifest(ref).get("layer"):
            problems += alignment(ref, hashes=full)
    return refs, problems


def alignment(ref: DatasetRef, *, hashes: bool = True) -> list[Problem]:
    """A layer's alignment with the versions it lies on (storage/layers.py), as Problems of kind ``alignment``."""
    from storage import layers  # layers builds on datasets; imported here so this module stays below it

    try:
        lines = layers.verify_alignment(ref, hashes=hashes)
    except Exception as e:  # a file below is missing or unreadable: verify_version of that version names it
        lines = [f"cannot check: {type(e).__name__}: {e}"]
    return [Problem(str(ref), "", ref.uri, "alignment", line) for line in lines]


def reject(ref: DatasetRef, problems: list[Problem]) -> str | None:
    """Un-commit a version that failed verification so its stage recomputes it: the manifest is renamed aside (kept,
    not deleted) and the bad files' checksum markers withdrawn. Returns the rejected manifest's URI (None: another
    process rejected it first)."""
    fs, base = datasets.filesystem(ref.uri)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    aside = posixpath.join(base, f"{MANIFEST}.rejected-{stamp}")
    try:
        fs.mv(posixpath.join(base, MANIFEST), aside)
    except FileNotFoundError:
        return None
    for p in problems:
        if p.name != MANIFEST:
            datasets.forget_shard(ref, p.name)
    return posixpath.join(ref.uri, posixpath.basename(aside))


def check_resume(ref: DatasetRef) -> dict[str, str]:
    """Before resuming an uncommitted version: re-hash every shard an earlier attempt left whole by size, and withdraw
    the marker of those whose bytes differ from what was written. Returns {shard uri: why} for every shard the
    resume will rewrite (torn, empty, unmarked or mismatching)."""
    redo = {datasets.shard_uri(ref, n): why for n, why in datasets.untrusted_shards(ref).items()}
    for name, st in datasets.shard_states(ref).items():
        if st.size is None or st.problem or st.recorded is None:
            continue
        _, digest = file_checksum(datasets.shard_uri(ref, name))
        if digest != st.recorded[1]:
            datasets.forget_shard(ref, name)
            redo[datasets.shard_uri(ref, name)] = f"xxh64 {digest}, written as {st.recorded[1]}"
    return redo
