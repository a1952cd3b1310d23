"""Quality filter as SQL: a recipe's rules become one DuckDB SELECT that adds `keep`, `drop_reason` and `drop_stage`.

A rule is `(name, predicate)` where the predicate is a DuckDB boolean expression over signal columns that is TRUE
when the document PASSES. `drop_reason` is the name of the FIRST failing rule (NULL when kept). A predicate that
evaluates to NULL counts as failing (unknown is not a pass; wrap a nullable signal in `coalesce` to decide otherwise).
Every document stays in the output: the funnel is `select drop_stage, drop_reason, count(*) ... group by all`.

A predicate is data, not code: it must be exactly ONE SQL expression. `check_predicate` (pure, no DuckDB) rejects
statement separators (`;`), comments (`--`, `/* */`), dollar quoting and unbalanced parentheses outside string
literals and quoted identifiers, so a rule cannot close the generated CASE or start a second statement whose result
would replace the stage's output. `quality_filter_sql` runs it on every rule; the recipe loader (datasets_cfg)
additionally parses each rule with DuckDB's own parser. What a single expression may reach (files, the environment)
is the sandboxed connection's business (ray_cluster/executor/shards.py: sandboxed_duckdb).

Named rule sets live in `tasks/filter/rules/<name>.yaml`: `gopher`, `c4`, `rpv2` (the RPv2 dataset card), `fineweb`
(datatrove family, `dt_*` columns from tasks.signals.datatrove_signals). C4's line-level rules rewrite `text` from the kept
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

from tasks.common.stage import implements
from tasks.common.verdict import redecide_verdict_sql

STAGE = "quality_filter"  # the drop_stage of a row a rule drops
RULES_DIR = Path(__file__).resolve().parent / "rules"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_OPS = {"==": operator.eq, "!=": operator.ne, ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}

Rule = tuple[str, str]
MAX_PREDICATE_CHARS = 10_000  # the longest bundled rule is ~120 chars; a 10k-char "rule" is a mistake or an attack


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
    # Bounds on evaluating the rules over one batch (rows_per_call rows), enforced by the engine in a child process
    # (ray_cluster/executor/limited_sql.py): the bundled rule sets take milliseconds and a few MB per 1,000 rows,
    # so a rule past a minute or a GB is a mistake or an attack (`range(20000000000)`, `list(range(600000000))`).
    sql_timeout_s: float = 60.0
    sql_memory_gb: float = 1.0

    def __post_init__(self) -> None:
        # Rule-set names, rule names and the rule list's shape fail here; each predicate's syntax is checked where
        # the SQL is built (quality_filter_sql) and, with the file named, by the recipe loader.
        try:
            resolve_rules(self.rules)
        except ValueError as e:
            raise ValueError(f"rules: {e}") from None
        if self.line_rules is not None and not load_rule_set(self.line_rules).get("line_rules"):
            raise ValueError(f"rule set {self.line_rules!r} has no line_rules")
        if not self.text_column:
            raise ValueError("text_column must not be empty")
        for knob, top in (("sql_timeout_s", 86_400.0), ("sql_memory_gb", 1_024.0)):
            v = getattr(self, knob)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= top:
                got = repr(v) if isinstance(v, (int, float)) else _short(v)
                raise ValueError(f"{knob} must be a number in (0, {top:g}], got {got}")

    def sql_parts(self) -> list[tuple[str, str]]:
        """(label, SQL over `batch`) of each rule alone: the engine runs them one by one, after the whole filter
        ran past sql_timeout_s or sql_memory_gb, to name the rule (and the file it comes from) in the error."""
        return [(f"quality_filter rule {name!r} ({origin})", rules_to_sql([(name, pred)], "batch"))
                for name, pred, origin in rule_origins(self.rules)]


@lru_cache(maxsize=32)
def load_rule_set(name: str) -> dict[str, Any]:
    """Read tasks/filter/rules/<name>.yaml: {name, rules: [{name, sql}], line_rules: [{name, signal, op, value}]}."""
    path = RULES_DIR / f"{name}.yaml"
    if not _NAME.match(name) or not path.exists():
        known = sorted(p.stem for p in RULES_DIR.glob("*.yaml"))
        raise ValueError(
            f"unknown rule set {_short(name)}; known: {known} (a boolean column as a rule is written `col = true`)"
        )
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
    if not isinstance(items, (tuple, list)):
        raise ValueError(f"rules must be a rule-set name or a list of rules, got a {type(items).__name__}")
    for i, item in enumerate(items):
        if isinstance(item, str) and _NAME.match(item):
            # a bare identifier is a rule-set name: a typo (`gopehr`) must not become a column-reference rule
            out.extend((r["name"], str(r["sql"])) for r in load_rule_set(item)["rules"])
        elif isinstance(item, str):
            out.append((f"rule_{i}", item))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            out.append((str(item[0]), str(item[1])))
        elif isinstance(item, dict) and {"name", "sql"} <= set(item):
            out.append((str(item["name"]), str(item["sql"])))
        else:
            raise ValueError(f"rule {i} must be a rule-set name, (name, predicate) or a predicate, got a {type(item).__name__}")
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


def rule_origins(rules: str | tuple | list) -> list[tuple[str, str, str]]:
    """resolve_rules with where each rule was written: its rule-set file, or the recipe's `quality_filter.rules[i]`."""
    items = [rules] if isinstance(rules, str) else list(rules)
    origin: list[str] = []
    for i, item in enumerate(items):
        if isinstance(item, str) and _NAME.match(item):
            origin += [str(RULES_DIR / f"{item}.yaml")] * len(load_rule_set(item)["rules"])
        else:
            origin.append(f"quality_filter.rules[{i}]" if not isinstance(rules, str) else "quality_filter.rules")
    return [(name, pred, where) for (name, pred), where in zip(resolve_rules(rules), origin, strict=True)]


def rules_to_sql(rules: list[Rule], source: str) -> str:
    """One SELECT over `source` adding `drop_reason` (first failing rule), `drop_stage` and `keep`; an existing
    verdict is replaced (tasks.common.verdict.redecide_verdict_sql: a rule that gives a row's earlier reason again
    keeps that reason's earlier drop_stage, every other failing rule is `quality_filter`'s)."""
    cases = "\n".join(f"    WHEN NOT coalesce(({pred}), false) THEN '{name}'" for name, pred in rules)
    return redecide_verdict_sql(source, f"CASE\n{cases}\n    ELSE NULL\n  END", stage=STAGE)


@implements("quality_filter")
def quality_filter_sql(params: QualityFilterParams = QualityFilterParams(), source: str = "batch") -> str:
    """The DuckDB SELECT for `params.rules` over the table expression `source`; refuses a rule that is not exactly
    one expression (this is the run-time gate: params built in code never passed the recipe loader)."""
    rules = resolve_rules(params.rules)
    for name, pred in rules:
        problem = check_predicate(pred)
        if problem:
            raise ValueError(f"quality_filter rule {name!r} is not a single SQL expression: {problem}")
    return rules_to_sql(rules, source)


def columns_read(params: QualityFilterParams, available: list[str]) -> list[str]:
    """The input columns the rules name (a column named anywhere in the SQL, conservatively), and `text` plus the
    line signals only when line rules rewrite the text: the filter reads signal columns, never the corpus."""
    sql = quality_filter_sql(params)
    out = [c for c in available if re.search(rf"(?<![A-Za-z0-9_]){re.escape(c)}(?![A-Za-z0-9_])", sql)]
    if params.line_rules is not None:
        rules = load_rule_set(params.line_rules).get("line_rules", [])
        out += [params.text_column, *(r["signal"] for r in rules)]
    return out


def check_predicate(sql: str) -> str | None:
    """Why `sql` is not exactly one SQL expression, or None when it is (as far as a tokenizer can tell).

    Scans outside '...' string literals (`''` escapes a quote) and "..." quoted identifiers (`""`): no `;`, no
    `--` or `/*` comment, no NUL, parentheses balanced and never closed below zero (a `)` too many escapes the
    generated `coalesce((...), false)`). DuckDB's other quoting is refused rather than modelled, because each would
    let this scan and DuckDB's lexer disagree about where a string ends (and so about where code is): `$$...$$`
    and `$tag$...$tag$` strings (any `$`), E'...' strings (backslash escapes a quote there) and `...` identifiers.
    A rule never needs them: in a standard '...' string a backslash is literal, as regexes want.
    """
    if not isinstance(sql, str):
        return f"a rule must be a string, got a {type(sql).__name__}"
    if not sql.strip():
        return "empty rule"
    if len(sql) > MAX_PREDICATE_CHARS:
        return f"{len(sql)} characters (at most {MAX_PREDICATE_CHARS})"
    depth, i, n = 0, 0, len(sql)
    while i < n:
        c = sql[i]
        if c == "'" and i and sql[i - 1] in "eE" and not (i > 1 and (sql[i - 2].isalpha() or sql[i - 2] == "_")):
            return f"escape string E'...' at character {i - 1} (a standard '...' string keeps backslashes literal)"
        if c == "`":
            return f"backtick-quoted identifier at character {i} (quote identifiers with \"...\")"
        if c in "'\"":
            end = i + 1
            while True:
                end = sql.find(c, end)
                if end < 0:
                    kind = "string literal" if c == "'" else "quoted identifier"
                    return f"unterminated {kind} starting at character {i}"
                if end + 1 < n and sql[end + 1] == c:  # doubled quote: an escaped quote inside
                    end += 2
                    continue
                break
            i = end + 1
            continue
        if c == ";":
            return f"statement separator ';' at character {i}"
        if sql.startswith("--", i) or sql.startswith("/*", i):
            return f"comment {sql[i:i + 2]!r} at character {i}"
        if c == "$":
            return f"'$' (parameter or dollar-quoted string) at character {i}"
        if c == "\x00":
            return f"NUL byte at character {i}"
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                return f"unbalanced ')' at character {i}"
        i += 1
    if depth:
        return f"{depth} unclosed '('"
    return None


def _short(value: Any, limit: int = 60) -> str:
    """A bounded repr for error messages: an echoed input is never longer than about `limit` characters."""
    if not isinstance(value, str):
        return f"a {type(value).__name__}"
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."


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


def funnel_summary(read: Any, elapsed: float, resources: Any, params: Any = None) -> dict:
    """The filter funnel of a stage's output (documents per drop_stage and drop_reason: the stage that dropped them
    and why), kept in its manifest's stats; kept documents are the row with no stage and reason ``(kept)``."""
    table = read(["drop_stage", "drop_reason"])
    if "drop_reason" not in table.column_names:
        return {}
    reasons = table.column("drop_reason").to_pylist()
    stages = table.column("drop_stage").to_pylist() if "drop_stage" in table.column_names else [None] * len(reasons)
    counts: dict[tuple[str | None, str], int] = {}
    for stage, reason in zip(stages, reasons, strict=True):
        key = (stage, reason) if reason is not None else (None, "(kept)")
        counts[key] = counts.get(key, 0) + 1
    total = max(1, table.num_rows)
    rows = [{"drop_stage": s, "drop_reason": r, "documents": v, "percent": round(100.0 * v / total, 2)}
            for (s, r), v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][0] or "", kv[0][1]))]
    return {"funnel": rows}


def funnel_artifact(manifest: dict) -> list[tuple[str, list[dict], str]]:
    rows = (manifest.get("stats") or {}).get("funnel")
    if not rows:
        return []
    ref = f"{manifest['dataset']}/{manifest['stage']}/{manifest['version']}"
    return [("filter-funnel", rows, f"filter funnel of {ref}: documents per drop_stage and drop_reason")]
