"""WHAT to build: YAML recipes validated into a ``RunConfig`` composed from the stages' own ``*Params``.

    from datasets_cfg import load
    cfg = load("datasets_cfg/tiny.yaml")

A typo or a wrong type is an error that names the file and the key (``extra="forbid"``). Each stage receives only
its own params, never the RunConfig (torchtitan's lesson). Resources and addresses live in ray_cluster profiles.

A recipe is untrusted data. Loading one never runs code, never expands without bound and never leaks:

* the YAML loader is a SafeLoader that rejects duplicate keys (a second ``ingest:`` would silently replace the
  first) and stops alias expansion past ``MAX_YAML_NODES`` nodes (a "billion laughs" bomb is a few hundred bytes);
* ``$VAR`` / ``${VAR}`` in a path, root or URL is expanded; an unset variable is an error naming it;
* every quality_filter rule is exactly one SQL expression (tasks.filter.quality_filter's checker, then DuckDB's parser);
* error messages quote at most ``MAX_ECHO`` characters of a value, and never the value of a secret-bearing field
  (``*_env``, keys, tokens, passwords) or the password of a ``user:password@`` URL.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from datasets_cfg.names import Name, resolve_path
from tasks import registry
from tasks.filter.quality_filter import check_predicate, resolve_rules
from tasks.train.config import MODEL_PRESETS

RECIPES_DIR = Path(__file__).resolve().parent
# A recipe is a page of YAML (tiny.yaml: 6 kB, ~400 values). The bounds leave 20-50x room and keep the worst
# case cheap: PyYAML's pure-Python parser (the one whose composer can be hooked) needs ~1 s per 30 kB of dense YAML.
MAX_RECIPE_BYTES = 128 * 1024
MAX_YAML_NODES = 20_000  # values once aliases are expanded; a 9-level "billion laughs" is 9^9
MAX_YAML_DEPTH = 32  # nesting; tiny.yaml's deepest value is 4 levels down
MAX_ECHO = 60  # characters of an offending value that an error message may quote


class RecipeError(ValueError):
    """A recipe that does not validate; the message names the file and the offending key."""




class ExperimentVariant(BaseModel):
    """One data recipe of an experiment: the base recipe with some stages switched off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    skip: list[str] = Field(default_factory=list)  # stage sections of the recipe to leave out (e.g. quality_filter)


class ScalingSweep(BaseModel):
    """Extra cells for a scaling-law fit (Gadre et al. 2024): model sizes x tokens per parameter, per variant."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    variants: list[str] | None = None  # None: every variant
    model_sizes: list[str] = Field(min_length=1)
    tokens_per_param: list[float] = Field(min_length=1)  # M = D / N (the paper sweeps 20 .. 640)
    seed: int | None = None  # None: the experiment's first seed

    @model_validator(mode="after")
    def _positive(self) -> ScalingSweep:
        bad = [m for m in self.tokens_per_param if not m > 0]
        if bad:
            raise ValueError(f"tokens_per_param must be > 0, got {bad[:5]}")
        return self


class ExperimentConfig(BaseModel):
    """A matrix of data recipes x model sizes x seeds, each trained on the same token budget and evaluated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    variants: dict[str, ExperimentVariant] = Field(min_length=1)
    model_sizes: list[str] = Field(default_factory=lambda: ["tiny"], min_length=1)  # tasks.train.trainer.MODEL_PRESETS
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    target_tokens: int = Field(gt=0)  # every cell trains on exactly this many tokens (resampled per variant)
    # Comparisons (tasks/evaluate/compare.py): every variant against `baseline` (default: the first variant).
    baseline: str | None = None
    bootstrap_iters: int = Field(default=1000, ge=100)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)  # of the bootstrap intervals
    alpha: float = Field(default=0.05, gt=0.0, lt=0.5)  # of the paired test
    stats_seed: int = 0  # the bootstrap's and the permutation test's generator: the table is reproducible
    scaling: ScalingSweep | None = None

    @model_validator(mode="after")
    def _names_exist(self) -> ExperimentConfig:
        # here, so that a typo fails at load and not after the first cells have trained
        sizes = self.model_sizes + (self.scaling.model_sizes if self.scaling else [])
        unknown = [_clip(s) for s in sizes if s not in MODEL_PRESETS]
        if unknown:
            raise ValueError(f"unknown model_sizes {unknown}; known: {sorted(MODEL_PRESETS)}")
        named = ([self.baseline] if self.baseline is not None else []) + list(
            (self.scaling.variants or []) if self.scaling else [])  # fmt: skip
        missing = [_clip(v) for v in named if v not in self.variants]
        if missing:
            raise ValueError(f"baseline/scaling name variants {missing} that are not in variants {list(self.variants)}")
        for name, v in self.variants.items():
            bad = [_clip(s) for s in v.skip if s not in _SKIPPABLE]
            if bad:
                raise ValueError(f"variant {_clip(name)!r} skips {bad}; skippable stages are {sorted(_SKIPPABLE)}")
        return self


class _RecipeBase(BaseModel):
    """One dataset recipe. Stage sections that are absent are skipped by the flows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: Name
    description: str = ""
    storage_root: str | None = Field(default=None, min_length=1)  # None: $QUARRY_ROOT, else ./data under the cwd
    cluster: str = Field(default="local", min_length=1)  # a profile in ray_cluster/profiles
    # another recipe (path, relative to this file) whose dataset this one continues: without it, a second recipe
    # writing the same dataset under the same root is refused (flows/leasing.py, storage/pointers.py claim)
    same_dataset_as: str | None = Field(default=None, min_length=1)
    experiment: ExperimentConfig | None = None

    @model_validator(mode="after")
    def _stages_fit_together(self) -> RunConfig:
        # minhash_dedup buckets on the band keys of its similarity; without them it fails after every earlier stage
        if self.minhash_dedup is not None:
            sims = self.minhash_signatures.similarities if self.minhash_signatures is not None else ()
            if float(self.minhash_dedup.similarity) not in {float(s) for s in sims}:
                raise ValueError(
                    f"minhash_dedup.similarity {self.minhash_dedup.similarity} needs the band keys of "
                    f"minhash_signatures.similarities (now {list(sims)}): add it there"
                )
        return self

    def variant(self, skip: list[str]) -> RunConfig:
        """This recipe with the named stage sections removed (an experiment's data variant)."""
        unknown = [s for s in skip if s not in _SKIPPABLE]
        if unknown:
            raise RecipeError(f"cannot skip {unknown}: skippable stages are {sorted(_SKIPPABLE)}")
        return self.model_copy(update={s: None for s in skip})

    @property
    def root(self) -> str:
        return self.storage_root or os.environ.get("QUARRY_ROOT") or str(Path.cwd() / "data")


# Every recipe section is a registry stage's params (tasks/registry.py): `ingest` is required, the rest optional.
_SECTIONS: dict[str, Any] = {
    name: ((params, ...) if name == "ingest" else (params | None, None))
    for name, params in registry.sections().items()
    if params is not None
}
RunConfig = create_model("RunConfig", __base__=_RecipeBase, **_SECTIONS)
RunConfig.__doc__ = _RecipeBase.__doc__


# not heldout: every variant must be evaluated on the same never-trained-on documents
_SKIPPABLE = {*registry.CURATION, "embed", "hkmeans", "semdedup", "balance"}


# ------------------------------------------------------------------------------------------------ reading YAML


class _RecipeYAMLError(yaml.YAMLError):
    """A recipe-level YAML problem (a duplicate key, an alias bomb) and the line it is on."""

    def __init__(self, message: str, mark: Any):
        super().__init__(message)
        self.message, self.line = message, mark.line + 1


class _RecipeLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate mapping keys and bounds the document's size after alias expansion.

    Aliases make a YAML document a DAG: nine anchors of nine aliases each are 9^9 nodes once pydantic (or a repr in
    an error message) walks them as a tree. The composer sizes each node bottom-up (an alias costs the full size of
    its anchor) and keeps a running total of the expanded document, which stops at MAX_YAML_NODES as soon as it is
    passed: before anything is expanded, and before a long flat list is even read to its end.
    """

    def __init__(self, stream: str):
        super().__init__(stream)
        self._expanded: dict[int, int] = {}  # id(node) -> values it stands for once aliases are expanded
        self._total = 0  # values of the document composed so far, aliases expanded
        self._depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        mark = self.peek_event().start_mark
        alias = self.check_event(yaml.AliasEvent)
        # PyYAML composes recursively: 300 nested `[` would be a RecursionError, not an error naming the line
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _RecipeYAMLError(f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if alias:
            if id(node) not in self._expanded:  # an alias to an enclosing node (`&a [*a]`): a cycle
                raise _RecipeYAMLError("an alias refers to a value that contains it (a cycle)", mark)
            self._total += self._expanded[id(node)]
        else:
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            else:
                children = ()
            self._expanded[id(node)] = 1 + sum(self._expanded[id(c)] for c in children)
            self._total += 1
        if self._total > MAX_YAML_NODES:
            raise _RecipeYAMLError(f"more than {MAX_YAML_NODES} values once aliases are expanded", mark)
        return node

    def construct_mapping(self, node, deep=False):  # noqa: ANN001 - PyYAML's signature
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` then an explicit key is an override: the point of merge keys
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = first_line.setdefault(key, line)
                except TypeError:  # an unhashable key: SafeConstructor reports it
                    continue
                if first != line:
                    raise _RecipeYAMLError(
                        f"duplicate key {_clip(key)!r} (first at line {first}): the second would silently "
                        "replace the first",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


_RecipeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _RecipeLoader.construct_mapping)


def _read_yaml(path: Path) -> Any:
    try:
        size = path.stat().st_size
        raw = path.read_bytes() if size <= MAX_RECIPE_BYTES else None
    except FileNotFoundError:
        raise RecipeError(f"recipe not found: {path}") from None
    except OSError as e:
        raise RecipeError(f"cannot read recipe {path}: {e.strerror}") from None
    if raw is None:
        raise RecipeError(f"invalid recipe {path}: {size} bytes, more than the {MAX_RECIPE_BYTES} a recipe may have")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(f"invalid recipe {path}: not UTF-8 (byte {e.start})") from None
    loader = _RecipeLoader(text)  # what yaml.load(text, Loader=...) does, with our SafeLoader subclass
    try:
        return loader.get_single_data()
    except _RecipeYAMLError as e:
        raise RecipeError(f"invalid recipe {path}: line {e.line}: {e.message}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"invalid YAML in {path}: {_yaml_problem(e)}") from None
    except (ValueError, OverflowError) as e:  # a scalar that does not construct: a 5,000-digit int, 2024-13-45
        raise RecipeError(f"invalid YAML in {path}: {_clip(str(e), 200)}") from None
    finally:
        loader.dispose()


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's problem and position, without the source snippet str(e) adds: that is the recipe's own text, which
    may hold a pasted key, on a line of any length."""
    if not isinstance(e, yaml.MarkedYAMLError):
        return _clip(_scrub(str(e)), 200)
    mark = e.problem_mark or e.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + "; ".join(_clip(_scrub(m), 120) for m in (e.context, e.problem) if m)


# ---------------------------------------------------------------------------------------- paths and $VARIABLES

# fields that hold a path, root or URL: variables are expanded there (and only there)
_PATH_FIELDS: dict[str, tuple[str, ...]] = {
    "quality_signals": (
        "stopwords_path", "ldnoobw_dir", "fasttext_lid_model", "kenlm_model", "sentencepiece_model", "palm_model",
        "wikipedia_model", "wikiref_model", "dsir_dir", "ut1_domains",
    ),
    "embed": ("model", "base_url"),
    "augment": ("model", "tokenizer", "base_url"),
    "tokenize": ("tokenizer",),
    "evaluate": ("eval_dir",),
    "language_id": ("model",),
    "decontaminate": ("eval_dir", "cache_dir"),
}
# lists of ingest sources: their paths are relative to the recipe file
_SOURCE_LISTS = (("ingest", "sources"), ("quality_classifier", "positive"), ("quality_classifier", "negative"))
# bounded repeats: an unbounded `[^}]*` rescans the rest of the value at every "${" (quadratic on 1 MB of "${")
_VAR = re.compile(r"\$(?:\{(?P<braced>[^}]{0,256})\}|(?P<name>[A-Za-z_][A-Za-z0-9_]{0,255}))")
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _expand(value: str, key: str) -> str:
    """``$NAME`` / ``${NAME}`` from the environment. Unset, empty or malformed is an error naming the variable:
    ``${DATA}/x`` must never become a folder literally named ``${DATA}``, nor ``/x`` when DATA is empty."""

    def sub(m: re.Match) -> str:
        name = m.group("name") or m.group("braced")
        if not _VAR_NAME.match(name or ""):
            raise RecipeError(f"{key}: {_clip(m.group(0))} is not a variable reference ($NAME or ${{NAME}})")
        if not os.environ.get(name):
            raise RecipeError(f"{key}: environment variable ${{{name}}} is not set (a path never keeps it literally)")
        return os.environ[name]

    if "${" in _VAR.sub("", value):
        raise RecipeError(f"{key}: '${{' without a closing '}}'")
    return _VAR.sub(sub, value)


def _resolve_paths(data: dict, base: Path) -> dict:
    """Variables expanded in every path field; source paths, eval_dir and the storage root made relative to the
    recipe file. Sections are copied before they are changed: the caller's data is left as it was."""
    for section, key in _SOURCE_LISTS:
        sec = data.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), list):
            data[section] = sec = dict(sec)
            sec[key] = [dict(s) if isinstance(s, dict) else s for s in sec[key]]
            for i, src in enumerate(sec[key]):
                if isinstance(src, dict) and isinstance(src.get("path"), str):
                    where = f"{section}.{key}.{i}.path"
                    src["path"] = _resolve(_expand(src["path"], where), base, where)
    for section, fields in _PATH_FIELDS.items():
        if isinstance(data.get(section), dict):
            data[section] = params = dict(data[section])
            for f in fields:
                if isinstance(params.get(f), str):
                    params[f] = _expand(params[f], f"{section}.{f}")
    if isinstance(data.get("evaluate"), dict) and isinstance(data["evaluate"].get("eval_dir"), str):
        data["evaluate"]["eval_dir"] = _resolve(data["evaluate"]["eval_dir"], base, "evaluate.eval_dir")
    dc = data.get("decontaminate")
    if isinstance(dc, dict):  # decontaminate checks what evaluate scores: its eval files and tasks, unless it names its own
        data["decontaminate"] = dc = dict(dc)
        for key in ("eval_dir", "cache_dir"):
            if isinstance(dc.get(key), str):
                dc[key] = _resolve(dc[key], base, f"decontaminate.{key}")
        evaluate = data.get("evaluate") if isinstance(data.get("evaluate"), dict) else {}
        for key in ("eval_dir", "tasks"):
            if dc.get(key) is None and evaluate.get(key) is not None:
                dc[key] = evaluate[key]
        if dc.get("eval_dir") is None:
            raise RecipeError("decontaminate.eval_dir: not set, and the recipe has no evaluate.eval_dir to take it from")
    if isinstance(data.get("storage_root"), str):
        data["storage_root"] = _resolve(_expand(data["storage_root"], "storage_root"), base, "storage_root")
    if isinstance(data.get("same_dataset_as"), str):
        data["same_dataset_as"] = _resolve(data["same_dataset_as"], base, "same_dataset_as")
    return data


def _resolve(path: str, base: Path, key: str) -> str:
    try:
        return resolve_path(path, base)
    except ValueError as e:
        raise RecipeError(f"{key}: {e}") from None


# ---------------------------------------------------------------------------------------------------- secrets

# Secret-bearing keys: their values are never quoted back. An *_env field must hold a variable NAME, and a pasted
# key is the usual mistake.
_SECRET_KEY = re.compile(r"(_env$|api_?key|token$|passw|secret|credential|auth)", re.IGNORECASE)
# bounded like _VAR: `[A-Za-z][A-Za-z0-9+.-]*://` alone took minutes on a 100 kB word (quadratic backtracking)
_URL_CREDENTIALS = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]{0,31}://[^/@\s:]{0,256}):(?P<password>[^/@\s]{0,1024})@"
)


def _walk(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every scalar of the raw recipe (bounded: the loader capped the node count)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{key}.{i}")
    else:
        yield key, value


def _secrets(data: Any) -> list[str]:
    """Values no error message may contain: those of secret-bearing keys, and URL passwords; longest first."""
    found = set()
    for key, value in _walk(data):
        if not isinstance(value, str):
            continue
        if _SECRET_KEY.search(key.rsplit(".", 1)[-1]) and len(value) >= 4:
            found.add(value)
        found.update(m.group("password") for m in _URL_CREDENTIALS.finditer(value) if m.group("password"))
    return sorted(found, key=len, reverse=True)


def _check_secrets(data: dict, path: Path) -> None:
    """Before pydantic sees the data (its errors carry the input): credentials never come from a recipe."""
    for key, value in _walk(data):
        if key.rsplit(".", 1)[-1].endswith("_env") and value is not None:
            if not (isinstance(value, str) and _VAR_NAME.match(value)):
                raise RecipeError(
                    f"invalid recipe {path}: {_clip(key, 200)} must be the NAME of an environment variable "
                    "(e.g. OPENAI_API_KEY), not its value; the value is not shown"
                )
        if isinstance(value, str) and _URL_CREDENTIALS.search(value):
            raise RecipeError(
                f"invalid recipe {path}: {_clip(key, 200)} holds a URL with a password (user:password@); "
                "credentials come from the environment, never from a recipe"
            )


def _scrub(text: str, secrets: list[str] = ()) -> str:
    text = _URL_CREDENTIALS.sub(r"\g<head>:***@", text)
    for s in secrets:
        text = text.replace(s, "***")
    return text


def _clip(value: Any, limit: int = MAX_ECHO) -> str:
    """A value as an error message may quote it: at most ``limit`` characters, never a whole container."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<an integer of {value.bit_length()} bits>"  # repr of a 5,000-digit int raises ValueError
    elif isinstance(value, (bool, int, float)) or value is None:
        text = repr(value)
    elif isinstance(value, (dict, list, tuple)):
        return f"<a {type(value).__name__} of {len(value)} items>"
    else:
        return f"<a {type(value).__name__}>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


# ------------------------------------------------------------------------------------------------- validation


def _check_rules(cfg: RunConfig, path: Path) -> None:
    """Each quality_filter rule is exactly one SQL expression: the tokenizer check that quality_filter_sql repeats
    at run time, then DuckDB's own parser as the authority on the grammar."""
    if cfg.quality_filter is None:
        return
    import duckdb  # here, not at import time: only recipes with a filter pay for it

    for name, pred in resolve_rules(cfg.quality_filter.rules):
        problem = check_predicate(pred)
        if problem is None:
            try:
                statements = duckdb.extract_statements(f"SELECT ({pred}) AS keep FROM batch")
                if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
                    problem = f"parses as {len(statements)} statements"
                else:
                    duckdb.SQLExpression(pred)  # one expression, no modifier (ORDER BY, LIMIT)
            except duckdb.Error as e:
                problem = _clip(str(e).splitlines()[0], 200)  # the first line: the next ones quote the SQL back
        if problem:
            raise RecipeError(
                f"invalid recipe {path}: quality_filter.rules: rule {_clip(name)!r} is not one SQL expression: "
                f"{problem}"
            )


def _format_error(path: Path, err: ValidationError, secrets: list[str] = ()) -> str:
    lines = [f"invalid recipe {path}:"]
    for e in err.errors():
        loc = _clip(".".join(str(p) for p in e["loc"]), 200)
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            lines.append(f"  unknown key {loc!r}")
            continue
        # the input of a section-level error is the whole section (a stage's __post_init__ failed): never quoted,
        # nor the value of a secret-bearing key
        hidden = isinstance(e.get("input"), (dict, list, tuple)) or any(
            isinstance(p, str) and _SECRET_KEY.search(p) for p in e["loc"]
        )
        value = e.get("input")
        got = "" if hidden else f" (got {_clip(value)!r})" if isinstance(value, str) else f" (got {_clip(value)})"
        msg = _clip(e["msg"].removeprefix("Value error, "), 300)  # a stage's own check: its message names the key
        lines.append(f"  {loc}: {msg}{got}" if loc else f"  {msg}")
    return _scrub("\n".join(lines), secrets)


def validate(data: dict, path: str | Path = "<recipe>") -> RunConfig:
    """A RunConfig from parsed recipe data; ``path`` names the file in errors and anchors relative paths."""
    path = Path(path)
    if not isinstance(data, dict):
        raise RecipeError(f"invalid recipe {path}: the top level must be a mapping, got {type(data).__name__}")
    _check_secrets(data, path)
    secrets = _secrets(data)
    try:
        resolved = _resolve_paths(dict(data), path.resolve().parent)
    except RecipeError as e:
        raise RecipeError(f"invalid recipe {path}: {_scrub(str(e), secrets)}") from None
    try:
        cfg = RunConfig.model_validate(resolved)
    except ValidationError as e:
        raise RecipeError(_format_error(path, e, secrets)) from None
    _check_rules(cfg, path)
    return cfg


def load(path: str | Path) -> RunConfig:
    """Read and validate a recipe; relative paths inside it are relative to the recipe file.

    ``path`` is taken as given (relative to the working directory). A missing file is an error, never a fall-back
    to the bundled recipe of the same name: that would run another recipe than the one asked for.
    """
    path = Path(path)
    return validate(_read_yaml(path), path)


def recipes() -> list[Path]:
    return sorted(RECIPES_DIR.glob("*.yaml"))
