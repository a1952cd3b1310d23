"""Quality filter as SQL: a recipe's rules become one DuckDB SELECT that adds `keep` and `drop_reason`.

A rule is `(name, predicate)` where the predicate is a DuckDB boolean expression over signal columns that is TRUE
when the document PASSES. `drop_reason` is the name of the FIRST failing rule (NULL when kept). A predicate that
evaluates to NULL counts as failing (unknown is not a pass; wrap a nullable signal in `coalesce` to decide otherwise).
Every document stays in the output: the funnel is `select drop_reason, count(*) ... group by 1`.

Named rule sets live in `tasks/rules/<name>.yaml`: `gopher`, `c4`, `rpv2` (the RPv2 dataset card), `fineweb`
(datatrove family, `dt_*` columns from tasks.datatrove_signals). C4's line-level rules rewrite `text` from the kept
`rps_lines_*` spans (`line_filter`, a pure per-batch function).

This module never imports duckdb; the engine runs the SQL on each Arrow batch:

    sql = quality_filter_sql(params, source="batch")  # `batch`: the Arrow table registered in DuckDB
    out = con.sql(sql).to_arrow_table()        # after con.register("batch", line_filter(b, params))
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

RULES_DIR = Path(__file__).resolve().parent / "rules"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_OPS = {"==": operator.eq, "!=": operator.ne, ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}

Rule = tuple[str, str]


@dataclass(frozen=True, kw_only=True, slots=True)
class QualityFilterParams:
    """Quality filter settings.

    rules: a named rule set ("gopher", "c4", "rpv2", "fineweb"), or a sequence whose items are rule-set names,
        `(name, predicate)` pairs, or bare predicates (named `rule_<i>`). Order matters: the first failing rule
        is the drop_reason.
    line_rules: a named rule set whose `line_rules` rewrite `text` from the kept line spans (C4 line filtering),
        or None to leave text as is.
    """

    rules: str | tuple[str | tuple[str, str], ...] = "gopher"
    line_rules: str | None = None
    text_column: str = "text"


@lru_cache(maxsize=32)
def load_rule_set(name: str) -> dict[str, Any]:
    """Read tasks/rules/<name>.yaml: {name, rules: [{name, sql}], line_rules: [{name, signal, op, value}]}."""
    path = RULES_DIR / f"{name}.yaml"
    if not _NAME.match(name) or not path.exists():
        known = sorted(p.stem for p in RULES_DIR.glob("*.yaml"))
        raise ValueError(f"unknown rule set {name!r}; known: {known}")
    with open(path) as f:
        spec = yaml.safe_load(f)
    for rule in spec.get("line_rules", []):
        if rule["op"] not in _OPS:
            raise ValueError(f"{path}: line rule {rule['name']!r} has unknown op {rule['op']!r}")
    return spec


def resolve_rules(rules: str | tuple | list) -> list[Rule]:
    """Flatten params.rules into an ordered list of (name, predicate); names must be unique identifiers."""
    items = [rules] if isinstance(rules, str) and _NAME.match(rules) else rules
    if isinstance(items, str):  # a single bare predicate
        items = [items]
    out: list[Rule] = []
    for i, item in enumerate(items):
        if isinstance(item, str) and _NAME.match(item) and (RULES_DIR / f"{item}.yaml").exists():
            out.extend((r["name"], str(r["sql"])) for r in load_rule_set(item)["rules"])
        elif isinstance(item, str):
            out.append((f"rule_{i}", item))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            out.append((str(item[0]), str(item[1])))
        elif isinstance(item, dict) and {"name", "sql"} <= set(item):
            out.append((str(item["name"]), str(item["sql"])))
        else:
            raise ValueError(f"rule {i} must be a rule-set name, (name, predicate) or a predicate, got {item!r}")
    names = [n for n, _ in out]
    bad = [n for n in names if not _NAME.match(n)]
    if bad:
        raise ValueError(f"rule names must be identifiers (they become drop_reason values): {bad}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate rule names: {dupes}")
    if not out:
        raise ValueError("no rules given")
    return out


def rules_to_sql(rules: list[Rule], source: str) -> str:
    """One SELECT over `source` adding `drop_reason` (first failing rule) and `keep`; an existing keep/drop_reason
    column is replaced."""
    cases = "\n".join(f"    WHEN NOT coalesce(({pred}), false) THEN '{name}'" for name, pred in rules)
    return (
        "SELECT *, drop_reason IS NULL AS keep FROM (\n"
        "  SELECT COLUMNS(lambda c: c NOT IN ('keep', 'drop_reason')),\n"
        f"  CASE\n{cases}\n    ELSE NULL\n  END::VARCHAR AS drop_reason\n"
        f"  FROM {source}\n)"
    )


def quality_filter_sql(params: QualityFilterParams = QualityFilterParams(), source: str = "batch") -> str:
    """The DuckDB SELECT for `params.rules` over the table expression `source`."""
    return rules_to_sql(resolve_rules(params.rules), source)


def line_filter(batch: pa.Table, params: QualityFilterParams) -> pa.Table:
    """Rewrite `text` as the concatenation of the raw line spans that pass every line rule of `params.line_rules`.

    Adds `qf_original_length` (chars before), `qf_lines_total`, `qf_lines_kept`. A doc whose line signals are null
    or do not line up with its text keeps its text unchanged, with `qf_line_filter_error` saying why.
    """
    if params.line_rules is None:
        return batch
    rules = load_rule_set(params.line_rules).get("line_rules", [])
    if not rules:
        raise ValueError(f"rule set {params.line_rules!r} has no line_rules")
    signals = sorted({r["signal"] for r in rules})
    missing = [c for c in [params.text_column, *signals] if c not in batch.column_names]
    if missing:
        raise ValueError(f"line_filter needs columns {missing} (run quality_signals first)")
    texts = batch.column(params.text_column).to_pylist()
    spans = {s: batch.column(s).to_pylist() for s in signals}
    new_text, orig_len, n_total, n_kept, errors = [], [], [], [], []
    for i, text in enumerate(texts):
        orig_len.append(None if text is None else len(text))
        per_signal = {s: spans[s][i] for s in signals}
        err = _check_spans(text, per_signal)
        if err:
            new_text.append(text)
            n_total.append(None)
            n_kept.append(None)
            errors.append(err)
            continue
        first = per_signal[signals[0]]
        keep = np.ones(len(first), dtype=bool)
        for r in rules:
            scores = np.array([_f(s, 2) for s in per_signal[r["signal"]]], dtype=float)
            keep &= _OPS[r["op"]](scores, float(r["value"]))  # NaN (null score) compares False: line dropped
        new_text.append("".join(text[int(_f(s, 0)) : int(_f(s, 1))] for s, k in zip(first, keep, strict=True) if k))
        n_total.append(len(first))
        n_kept.append(int(keep.sum()))
        errors.append(None)
    out = batch.drop_columns(
        [
            c
            for c in ("qf_original_length", "qf_lines_total", "qf_lines_kept", "qf_line_filter_error")
            if c in batch.column_names
        ]
    )
    idx = out.schema.get_field_index(params.text_column)
    out = out.set_column(idx, params.text_column, pa.array(new_text, pa.string()))
    out = out.append_column("qf_original_length", pa.array(orig_len, pa.int64()))
    out = out.append_column("qf_lines_total", pa.array(n_total, pa.int64()))
    out = out.append_column("qf_lines_kept", pa.array(n_kept, pa.int64()))
    return out.append_column("qf_line_filter_error", pa.array(errors, pa.string()))


_SPAN_FIELDS = ("start", "end", "score")


def _f(span: Any, i: int) -> float:
    """Field i of a span: quality_signals emits struct<start, end, score> (a dict here); [start, end, score] works too."""
    v = span[_SPAN_FIELDS[i]] if isinstance(span, dict) else span[i]
    return np.nan if v is None else v


def _check_spans(text: str | None, per_signal: dict[str, Any]) -> str | None:
    if text is None:
        return "null text"
    lengths = set()
    for name, spans in per_signal.items():
        if spans is None:
            return f"{name} is null"
        lengths.add(len(spans))
    if len(lengths) != 1:
        return f"line signals disagree on the number of lines: {sorted(lengths)}"
    first = next(iter(per_signal.values()))
    pos = 0
    for s in first:
        if s is None or len(s) != 3 or np.isnan(_f(s, 0)) or int(_f(s, 0)) != pos or not _f(s, 1) >= pos:
            return f"line spans do not tile the text at offset {pos}"
        pos = int(_f(s, 1))
    if pos != len(text):
        return f"line spans end at {pos} but text has {len(text)} chars"
    return None


def funnel_summary(read: Any, elapsed: float, resources: Any) -> dict:
    """The filter funnel of a stage's output (documents per drop_reason), kept in its manifest's stats."""
    table = read(["drop_reason"])
    if "drop_reason" not in table.column_names:
        return {}
    counts: dict[str, int] = {}
    for r in table.column("drop_reason").to_pylist():
        counts[r or "(kept)"] = counts.get(r or "(kept)", 0) + 1
    total = max(1, table.num_rows)
    rows = [{"drop_reason": k, "documents": v, "percent": round(100.0 * v / total, 2)}
            for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return {"funnel": rows}


def funnel_artifact(manifest: dict) -> list[tuple[str, list[dict], str]]:
    rows = (manifest.get("stats") or {}).get("funnel")
    if not rows:
        return []
    ref = f"{manifest['dataset']}/{manifest['stage']}/{manifest['version']}"
    return [("filter-funnel", rows, f"filter funnel of {ref}")]
