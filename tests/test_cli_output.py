"""What `quarry sql` prints is exactly what the data says (issue 28): values are never Rich markup, long and wide
results are capped the way DuckDB's CLI caps them (and say what they left out), files are not overwritten unasked,
and a root with no catalog is an error rather than an empty answer. In-process through typer's test runner on a
small real store (versions committed with storage.datasets)."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

import quarry_cli
from dashboards import terminal as render
from storage import datasets
from storage.datasets import DatasetRef

runner = CliRunner()
_ALPHABET = "[]/ab=#:@ \\é"
# the strings that broke the old table (markup tags, a closing tag with nothing open, an escape) and random ones
_HARD = ["a[b]c", "[/]", "[bold]x[/bold]", "[red]", "\\[x]", "[link=http://x]y[/link]", "[/red]]", "[[", "]]", "[@]"]


def _cli(*args, input: str | None = None, env: dict | None = None):
    return runner.invoke(quarry_cli.app, [str(a) for a in args], input=input, env=env, catch_exceptions=False)


def _bracket_strings(n: int) -> list[str]:
    rng = random.Random(28)
    out = list(_HARD)
    while len(out) < n:
        out.append("".join(rng.choice(_ALPHABET) for _ in range(rng.randint(1, 40))).strip() or "[")
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("out") / "store")
    ref = DatasetRef(root, "toy", "wide", datasets.make_version("toy", "wide", "1"))
    cols = {f"column_{i:02d}": [f"value-{i}-{j}" for j in range(100)] for i in range(22)}
    cols["tail_col"] = [f"last-{j}" for j in range(100)]
    datasets.write_table(ref, pa.table(cols))
    text = DatasetRef(root, "toy", "text", datasets.make_version("toy", "text", "1"))
    values = _bracket_strings(120)
    datasets.write_table(text, pa.table({"i": list(range(len(values))) + [len(values)], "t": values + [None],
                                         "odd[/]name": [0] * (len(values) + 1)}))  # fmt: skip
    return {"root": root, "wide": ref, "values": values}


def _table_cells(output: str) -> list[list[str]]:
    """The body rows of a Rich box table, cell texts stripped of their one-space padding."""
    rows = []
    for line in output.splitlines():
        if line.startswith("│"):
            rows.append([c[1:-1].rstrip() for c in line.strip("│").split("│")])
    return rows


def test_cell_values_are_printed_as_they_are_never_as_markup(store):
    out = _cli("sql", "--root", store["root"], "select 'a[b]c' c, null n, '[/]' z")
    assert out.exit_code == 0, out.output
    assert _table_cells(out.output) == [["a[b]c", "NULL", "[/]"]]
    assert "1 row" in out.output and "Traceback" not in out.output


def test_views_print_column_names_as_they_are(store):
    out = _cli("views", "--root", store["root"], "toy__text")
    assert out.exit_code == 0, out.output
    assert "odd[/]name" in out.output and "Traceback" not in out.output


def test_a_text_column_full_of_brackets_round_trips_byte_for_byte_through_the_table(store):
    out = _cli("sql", "--root", store["root"], "select i, t from toy__text order by i", "--max-rows", "0")
    assert out.exit_code == 0, out.output
    cells = _table_cells(out.output)
    assert [c[1] for c in cells] == store["values"] + ["NULL"]
    assert [int(c[0]) for c in cells] == list(range(len(store["values"]) + 1))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=_ALPHABET, min_size=1, max_size=50).map(str.strip).filter(bool), min_size=1,
                max_size=8))  # fmt: skip
def test_any_bracketed_text_renders_as_itself(values):
    console = Console(width=200, record=True, file=open("/dev/null", "w"), color_system=None)  # noqa: SIM115
    table, _ = render.table_lines(pa.table({"v": values}), width=200)
    console.print(table)
    assert [c[0] for c in _table_cells(console.export_text())] == values


def test_a_long_result_shows_the_first_rows_and_says_how_many_more(store):
    out = _cli("sql", "--root", store["root"], "select column_00 from toy__wide order by column_00")
    assert out.exit_code == 0, out.output
    assert len(_table_cells(out.output)) == 40
    assert "100 rows, first 40 shown: 60 more rows (--max-rows 0 shows every row)" in out.output
    assert len(_table_cells(_cli("sql", "--root", store["root"], "select * from toy__wide", "--max-rows", "0",
                                 "--format", "table").output)) == 100  # fmt: skip
    five = _cli("sql", "--root", store["root"], "select column_00 from toy__wide", "--max-rows", "5")
    assert len(_table_cells(five.output)) == 5 and "95 more rows" in five.output


def test_a_wide_result_elides_middle_columns_and_line_mode_shows_every_column(store):
    out = _cli("sql", "--root", store["root"], "select * from toy__wide order by column_00 limit 3")
    assert out.exit_code == 0, out.output
    header = next(line for line in out.output.splitlines() if "column_00" in line)
    assert "tail_col" in header and "…" in header and "column_11" not in header  # both ends kept, the middle elided
    assert max(len(line) for line in out.output.splitlines()) <= 200  # fits the (non-tty) console width
    shown = [c for c in header.strip("┃").split("┃") if c.strip() not in ("", "…")]
    assert f"{len(shown)} of 23 columns shown" in out.output and "--format line" in out.output
    cells = _table_cells(out.output)[0]
    assert all(not c.endswith("…") for c in cells if c != "…")  # a kept column is shown whole, not 2-8 characters
    line = _cli("sql", "--root", store["root"], "select * from toy__wide order by column_00 limit 2", "-f", "line")
    assert line.exit_code == 0, line.output
    blocks = line.output.strip().split("\n\n")
    first = dict(x.split(" = ", 1) for x in blocks[0].splitlines())
    assert {k.strip(): v for k, v in first.items()} == {**{f"column_{i:02d}": f"value-{i}-0" for i in range(22)},
                                                        "tail_col": "last-0"}  # fmt: skip


def test_markdown_escapes_pipes_and_json_is_lines_or_one_array(store):
    md = _cli("sql", "--root", store["root"], "select 'a|b' s, 2 n, null z", "-f", "markdown")
    assert md.exit_code == 0, md.output
    assert md.output.splitlines()[:3] == ["| s | n | z |", "|---|---:|---|", "| a\\|b | 2 | NULL |"]
    q = "select i, t from toy__text order by i limit 3"
    lines = _cli("sql", "--root", store["root"], q, "-f", "json").output.splitlines()
    array = json.loads(_cli("sql", "--root", store["root"], q, "-f", "json-array").output)
    assert [json.loads(x) for x in lines] == array == [{"i": i, "t": store["values"][i]} for i in range(3)]
    assert "JSON Lines" in " ".join(_cli("sql", "--help").output.split())


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json", "table"])
def test_output_file_is_not_overwritten_unless_forced_and_says_what_it_wrote(store, tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    q = "select column_00, tail_col from toy__wide"
    out = _cli("sql", "--root", store["root"], q, "-f", fmt, "-o", path)
    assert out.exit_code == 0, out.output
    assert f"wrote 100 rows, 2 columns to {path} ({fmt})" in out.output
    if fmt == "parquet":
        assert pq.read_table(path).num_rows == 100
    elif fmt == "table":
        assert len(_table_cells(path.read_text())) == 100  # a file gets every row, not the terminal's 40
    before = path.read_bytes()
    again = _cli("sql", "--root", store["root"], "select 1 x", "-f", fmt, "-o", path)
    assert again.exit_code == 2 and "already exists; --force overwrites it" in again.output
    assert path.read_bytes() == before
    forced = _cli("sql", "--root", store["root"], "select 1 x", "-f", fmt, "-o", path, "--force")
    assert forced.exit_code == 0 and f"wrote 1 row, 1 column to {path}" in forced.output
    assert path.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left behind


def test_parquet_needs_a_file_and_an_unknown_format_is_one_line(store):
    out = _cli("sql", "--root", store["root"], "select 1", "-f", "parquet")
    assert out.exit_code == 2 and "--format parquet needs --output FILE" in out.output
    out = _cli("sql", "--root", store["root"], "select 1", "-f", "xml")
    assert out.exit_code == 2 and len(out.output.strip().splitlines()) == 1 and "json-array" in out.output


@pytest.mark.parametrize("command", [["sql", "select * from versions"], ["datasets"], ["views"]])
def test_a_root_with_no_catalog_is_an_error_not_an_empty_answer(tmp_path, command):
    missing = tmp_path / "typo"
    out = _cli(*command, "--root", missing)
    assert out.exit_code == 2
    assert out.output.strip() == (f"no catalog at {missing} (no such directory); --root or $QUARRY_ROOT names the "
                                  "storage root")  # fmt: skip
    (tmp_path / "empty").mkdir()
    out = _cli(*command, env={"QUARRY_ROOT": str(tmp_path / "empty")})
    assert out.exit_code == 2 and "no committed version under it" in out.output
    assert len(out.output.strip().splitlines()) == 1


def test_pinned_versions_by_prefix_and_the_quoted_form_export_accepts(store, tmp_path):
    v = store["wide"].version
    out = _cli("sql", "--root", store["root"], f'select count(*) n from "toy__wide@{v[:4]}"', "-f", "json")
    assert out.exit_code == 0 and json.loads(out.output) == {"n": 100}
    short = _cli("sql", "--root", store["root"], f'select count(*) n from "toy__wide@{v[:3]}"')
    assert short.exit_code == 1 and "at least 4 characters of the version" in short.output
    short = _cli("export", "--root", store["root"], f"toy__wide@{v[:3]}", tmp_path / "s.parquet")
    assert short.exit_code == 1 and "at least 4 characters of the version" in short.output
    quoted = _cli("export", "--root", store["root"], f'"toy__wide@{v[:6]}"', tmp_path / "w.parquet")
    assert quoted.exit_code == 0, quoted.output
    assert pq.read_table(tmp_path / "w.parquet").num_rows == 100
