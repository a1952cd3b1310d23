"""The inputs of an ingest: a recipe's sources, the files each one lists, and each file's place inside its source.

A source is a folder, a glob, a single file or an object-store prefix on any fsspec filesystem. Every file it lists
gets an ``Origin``: the URI it is read from (provenance: the ``source`` column) and its place inside the source, the
source's ``name`` plus the file's path relative to the source's *root* (identity: what ``doc_id`` hashes). The root
of each way a source can be given:

* a folder (or an object-store prefix such as ``s3://bucket/crawl/``): that folder;
* a glob (``data/crawl/*/part-*.jsonl.gz``): the folder its fixed leading part names (``data/crawl``);
* a single file: the file itself (its relative path is empty: the file *is* the source);
* several files: one source each (each its own root), or one shared ``root`` (and ``name``) declared on each;
* ``root:`` given explicitly (an absolute path or URL holding every file of the source): that folder.

The default ``name`` is the root's last path component (a local root's symlinks resolved first), so the same
corpus read from another mount point, through a symlink, from a copy elsewhere or from an object store keeps its
ids, and ``name:`` declares it when the folder's name is not the corpus's.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import posixpath
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

Format = Literal["auto", "jsonl", "parquet", "text", "warc", "html"]

# A document larger than this is quarantined rather than carried through every stage (RPv2 and datatrove cap
# documents too; 10 MB of text is far beyond any real web page after extraction).
DEFAULT_MAX_DOC_BYTES = 10_000_000
# A record's raw form is larger than its text (JSON escapes, HTML markup, other fields); a record may hold this many
# times max_doc_bytes before it is given up while streaming (max_record_bytes overrides it).
RECORD_BYTES_PER_DOC_BYTE = 4
_GLOB_CHARS = "*?["
_log = logging.getLogger("quarry.ingest")


@dataclass(frozen=True, kw_only=True, slots=True)
class IngestSource:
    """One input of a recipe: a file, a folder or a glob on any fsspec filesystem."""

    path: str  # file, folder or glob; relative paths are resolved against the recipe file's folder
    # the source's name: with each file's path inside the source it makes the doc_ids (see the module docstring).
    # None: the last component of the source's root (a folder's name; a single file's name)
    name: str | None = None
    # the folder the files' relative paths are taken from (an absolute path or URL holding every file of the
    # source, taken literally, never as a glob). None: the folder itself, a glob's fixed leading folder, the file
    root: str | None = None
    format: Format = "auto"  # auto: from the extension (.jsonl/.json(.gz|.zst), .parquet, .txt, .warc/.wet/.arc, .html)
    domain: str = "web"  # label carried by every document (web, wikipedia, code, stackexchange, arxiv, ...)
    lang: str | None = None  # language when known for the whole source; a record's own lang field wins
    text_field: str = "text"  # JSONL/Parquet: the column holding the text
    html_field: str | None = None  # JSONL/Parquet: a column holding HTML to extract text from (instead of text_field)
    title_field: str | None = None  # prepended to the text as its first line when present (StackExchange titles)
    url_field: str | None = "url"  # JSONL/Parquet: the URL column; falls back to `id` when it looks like a URL
    lang_field: str | None = "lang"
    limit: int | None = None  # keep at most this many documents per file (tiny recipes, smoke tests)
    extractor: Literal["resiliparse", "trafilatura"] = "resiliparse"  # HTML main-text extraction
    main_content: bool = True  # extract the main content only (boilerplate removal) for full pages
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES
    # raw bytes one record (a JSONL line, a WARC payload, a text or HTML file) may take in memory while it is read;
    # a larger one is quarantined and skipped without being held. None: RECORD_BYTES_PER_DOC_BYTE x max_doc_bytes
    max_record_bytes: int | None = None
    encoding_errors: Literal["quarantine", "replace"] = "quarantine"  # non-UTF-8 records
    # a file whose share of bad records passes this, once bad_share_min_records were read, is quarantined whole: one
    # row naming the file with the counts, the rest never read (a binary or endless file named .jsonl stops early
    # instead of making a row per garbage line). None: never. Akin to BigQuery's maxBadRecords and Spark's
    # FAILFAST, but per file and by share; 0.9 leaves real files with many rejected records (empty texts) alone
    max_bad_share: float | None = 0.9
    bad_share_min_records: int = 1000  # records read before the share is judged (and checked again every this many)
    exclude: tuple[str, ...] = field(default_factory=tuple)  # glob patterns of files to skip inside a folder

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path must not be empty")
        # limit -1 / 0 read nothing (`kept >= limit` holds at once): a silently empty source, never what was meant
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 (or absent for no limit), got {self.limit}")
        if self.max_bad_share is not None and not 0 <= self.max_bad_share < 1:
            raise ValueError(f"max_bad_share must be >= 0 and < 1 (absent: 0.9; null: never), got {self.max_bad_share}")
        if self.bad_share_min_records < 1:
            raise ValueError(f"bad_share_min_records must be >= 1, got {self.bad_share_min_records}")
        if self.max_doc_bytes < 1:
            raise ValueError(f"max_doc_bytes must be >= 1, got {self.max_doc_bytes}")
        for name in ("text_field", "domain"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        if self.name is not None:
            check_name(self.name)
        if self.root is not None and not self.root:
            raise ValueError("root must not be empty (absent: the source's own folder)")

    @property
    def record_limit(self) -> int:
        """Raw bytes one record may take while it is read (``max_record_bytes``, else a multiple of max_doc_bytes)."""
        if self.max_record_bytes is not None:
            return self.max_record_bytes
        return RECORD_BYTES_PER_DOC_BYTE * self.max_doc_bytes


def check_name(name: str) -> str:
    """``name`` if it can name a source: not empty, no ``/`` (the first ``/`` of a source path ends the name)."""
    if not name.strip() or "/" in name or "\x00" in name:
        raise ValueError(f"a source name must be non-empty, without '/' or NUL, got {name!r}")
    return name


def detect_format(name: str) -> Format:
    """The reader for a file name, from its extension (compression suffixes ignored)."""
    base = name.lower()
    for suffix in (".gz", ".zst", ".zstd", ".xz", ".bz2"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    if base.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if base.endswith((".parquet", ".pq")):
        return "parquet"
    if base.endswith((".warc", ".wet", ".arc", ".wat")):
        return "warc"
    if base.endswith((".html", ".htm")):
        return "html"
    if base.endswith((".txt", ".md", ".text")):
        return "text"
    raise ValueError(f"cannot tell the format of {name!r} from its extension; set `format:` in the recipe source")


# ------------------------------------------------------------------------------------------------- origins


class Origin(NamedTuple):
    """Where a file's records come from: the URI read (provenance) and the file's place in its source (identity)."""

    uri: str  # the file as it was read: the documents' ``source`` column
    name: str  # the source's name
    path: str  # the file's path inside the source's root, posix; "" when the source is this one file

    @property
    def key(self) -> str:
        """``name/path`` (``name`` alone for a single-file source): the ``source_path`` column, hashed by doc_id."""
        return f"{self.name}/{self.path}" if self.path else self.name


def _strip_scheme(uri: str) -> str:
    return uri.split("://", 1)[1] if "://" in uri else uri


def relative_path(uri: str, root: str) -> str | None:
    """``uri``'s path below ``root`` (posix, "" when it is the root itself); None when it is not below it."""
    u, r = _strip_scheme(uri), _strip_scheme(root)
    if u == r:
        return ""
    prefix = r if r.endswith("/") else r + "/"
    return u[len(prefix):] if u.startswith(prefix) else None


def default_name(root: str) -> str:
    """The last component of ``root``, a local root's symlinks resolved first (a mount point is no name)."""
    path = _strip_scheme(root)
    if "://" not in root and os.path.isabs(path):
        path = os.path.realpath(path)
    base = posixpath.basename(path.rstrip("/"))
    if not base:
        raise ValueError(f"the source root {root!r} has no name of its own; set `name:` on the source")
    return base


def origin(spec: IngestSource, uri: str) -> Origin:
    """The origin of file ``uri`` of ``spec``: below ``spec.root`` when it is set (the planner sets it on every
    source it hands out), else the file is its own source (a file read on its own)."""
    root = spec.root if spec.root is not None else uri
    rel = relative_path(uri, root)
    if rel is None:
        raise ValueError(f"{uri} is not inside the source root {root}")
    return Origin(uri, spec.name if spec.name is not None else default_name(root), rel)


# ------------------------------------------------------------------------------------------------- input files


def _folder_files(fs: Any, path: str) -> list[tuple[str, dict]]:
    """(path, info) of every file below ``path``; the info (one listing call, no stat per file) carries the size
    the shard planner packs by and the type that tells a special file ("other") from a regular one."""
    return sorted((p, info) for p, info in fs.find(path, detail=True).items() if not posixpath.basename(p).startswith("."))


_SPECIAL = ((stat.S_ISFIFO, "a FIFO (named pipe): reading it blocks until a writer appears"),
            (stat.S_ISCHR, "a character device (such as /dev/urandom): its stream may never end"),
            (stat.S_ISBLK, "a block device"),
            (stat.S_ISSOCK, "a socket"))  # a directory is left to the open, which names it


def not_regular(uri: str) -> str | None:
    """Why a local path is not an ingestible regular file (a FIFO, device, socket, symlink loop), else None.

    One ``os.stat`` (which never blocks, unlike opening a FIFO); object stores and other remote filesystems hold
    only regular objects (None). A path that does not exist is left to the open, which names it."""
    if "://" in uri and not uri.startswith(("file://", "local://")):
        return None
    path = _strip_scheme(uri)
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symlink loop (ELOOP: too many levels of symbolic links)"
        return None
    return next((what for test, what in _SPECIAL if test(mode)), None)


def _missing(i: int, src_path: str, path: str) -> Exception:
    """The error for a source path that does not exist: a symlink loop or a dangling link says so."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return FileNotFoundError(f"ingest source {i} is a symlink loop (ELOOP: too many levels of symbolic links): {src_path}")
        if os.path.islink(path):
            return FileNotFoundError(f"ingest source {i} is a dangling symlink (to {os.readlink(path)!r}): {src_path}")
    return FileNotFoundError(f"ingest source {i} not found: {src_path}")


def _glob_root(path: str) -> str:
    """The folder a glob's fixed leading part names: ``/data/crawl/*/x.gz`` -> ``/data/crawl``."""
    parts = path.split("/")
    fixed = next(i for i, part in enumerate(parts) if any(ch in part for ch in _GLOB_CHARS))
    return "/".join(parts[:fixed])


class InputPlan(NamedTuple):
    files: list[tuple[int, str]]  # (source index, file URI), each file once, in a stable order
    repeats: list[dict]  # the files listed again, left out
    sources: tuple[IngestSource, ...]  # the sources with their ``name`` and ``root`` set (what workers read with)
    sizes: list[int] = []  # bytes of each file of ``files`` (as stored: compressed), what shards are packed by
    refused: list[dict] = []  # the special files listed (FIFOs, devices, sockets, symlink loops): never opened


def plan_sources(sources: Sequence[IngestSource]) -> InputPlan:
    """Every input file once, and each source with its name and root resolved (see ``plan_inputs``)."""
    import fsspec

    files: list[tuple[int, str]] = []
    repeats: list[dict] = []
    pinned: list[IngestSource] = []
    sizes: list[int] = []
    refused: list[dict] = []
    first: dict[str, tuple[int, str]] = {}  # resolved path -> (source, URI) of its first listing
    keys: dict[tuple[str, str], tuple[int, str]] = {}  # (name, path inside the source) -> (source, URI)
    for i, src in enumerate(sources):
        fs, path = fsspec.core.url_to_fs(src.path)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        local = protocol in ("file", "local")
        if fs.exists(path):
            root = path
            found = _folder_files(fs, path) if fs.isdir(path) else [(path, fs.info(path))]
        elif any(ch in path for ch in _GLOB_CHARS):
            root = _glob_root(path)
            found = []
            for p, info in sorted(fs.glob(path, detail=True).items()):
                found.extend(_folder_files(fs, p) if info.get("type") == "directory" else [(p, info)])
        elif local:
            raise _missing(i, src.path, path)
        else:
            raise FileNotFoundError(f"ingest source {i} not found: {src.path}")
        if src.root is not None:
            root = fsspec.core.url_to_fs(src.root)[1]
        root_uri = root if local else f"{protocol}://{root}"
        if not _strip_scheme(root_uri).strip("/") and src.name is None:
            raise ValueError(f"ingest source {i} ({src.path}) has no root folder to name it; set `root:` or `name:`")
        src = replace(src, name=src.name if src.name is not None else default_name(root_uri), root=root_uri)
        pinned.append(src)
        found = [(p, info) for p, info in found if not any(fnmatch.fnmatch(posixpath.basename(p), pat) for pat in src.exclude)]
        if not found:
            raise FileNotFoundError(f"ingest source {i} matched no files: {src.path}")
        for p, info in found:
            uri = p if local else f"{protocol}://{p}"
            # a FIFO, device, socket or symlink loop is listed (its quarantine row names it) but never opened: a FIFO
            # blocks its reader until a writer appears, /dev/urandom never ends, a loop cannot be resolved
            why = not_regular(uri) if local and info.get("type") != "file" else None
            if why is not None:
                refused.append({"source": i, "file": uri, "reason": f"not a regular file: {why}"})
                _log.warning(f"ingest source {i} ({src.path}): {uri} is not a regular file ({why}); not read, quarantined")
            key = os.path.realpath(p) if local and why is None else uri
            if key in first:
                j, earlier = first[key]
                repeats.append({"source": i, "file": uri, "first_source": j, "first_file": earlier})
                _log.warning(f"ingest source {i} ({src.path}) lists {uri} again (first listed by source {j}); read once")
                continue
            rel = relative_path(uri, root_uri)
            if rel is None:
                raise ValueError(f"ingest source {i}: {uri} is not inside its root {src.root}")
            if (src.name, rel) in keys:
                j, earlier = keys[(src.name, rel)]
                where = f"{src.name}/{rel}" if rel else src.name
                raise ValueError(f"ingest sources {j} and {i} give different files the same doc_ids ({where}: {earlier} and "
                                 f"{uri}); set a different `name:` on one of them")
            first[key] = keys[(src.name, rel)] = (i, uri)
            files.append((i, uri))
            sizes.append(int(info.get("size") or 0))
    return InputPlan(files, repeats, tuple(pinned), sizes, refused)


def plan_inputs(sources: Sequence[IngestSource]) -> tuple[list[tuple[int, str]], list[dict]]:
    """(source index, file URI) of every input file, each once, in a stable order; and the repeats left out.

    A path that exists is that file or folder, even when its name holds glob characters (``crawl[1].jsonl``); only a
    path that does not exist is a glob. A file listed again (the same path twice, overlapping globs, a folder and a
    file in it, a symlink to a listed file) is read once, by the first source that lists it: reading it twice gives
    every document twice under one doc_id, and dedup cannot tell such copies apart. A missing input, or a source
    that matches no file, is an error naming it; so are two different files that would get the same doc_ids (two
    sources of one name holding the same relative path).
    """
    plan = plan_sources(sources)
    return plan.files, plan.repeats


def list_input_files(sources: Sequence[IngestSource]) -> list[tuple[int, str]]:
    """(source index, file URI) for every input file, each once, in a stable order (see ``plan_inputs``)."""
    return plan_sources(sources).files
