"""The alignment record of a layer (storage/layers.py, issue 34): the doc_id fingerprint does not depend on batch
boundaries, tells order and nulls apart, and a layer written by code that stamps nothing still gets its record at
commit; a version without doc_id records counts only. The swapped-shard scenarios on real stages are in
tests/reliability/test_layer_alignment.py."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage import datasets, layers

ids = st.lists(st.one_of(st.none(), st.text(max_size=12)), max_size=40)


def _digest(values: list, cuts: list[int], typ: pa.DataType | None = None) -> dict:
    typ = typ or pa.string()
    fp = layers.Fingerprint()
    bounds = sorted({0, len(values), *(c % (len(values) + 1) for c in cuts)})
    for a, b in zip(bounds, bounds[1:], strict=False):
        fp.update(pa.table({"doc_id": pa.array(values[a:b], typ)}))
    if len(bounds) == 1:
        fp.update(pa.table({"doc_id": pa.array([], typ)}))
    return fp.record()


@settings(max_examples=200, deadline=None)
@given(ids, st.lists(st.integers(0, 40), max_size=6), st.lists(st.integers(0, 40), max_size=6))
def test_the_fingerprint_is_the_same_whatever_the_batches(values, cuts_a, cuts_b):
    one = _digest(values, cuts_a)
    assert one == _digest(values, cuts_b) == _digest(values, cuts_a, pa.large_string())
    assert one[layers.OF_ROWS] == len(values)


@settings(max_examples=200, deadline=None)
@given(ids, ids)
def test_other_ids_or_another_order_give_another_fingerprint(a, b):
    assert (_digest(a, []) == _digest(b, [])) == (a == b)


def test_null_and_empty_ids_and_concatenations_are_told_apart():
    assert _digest([None], []) != _digest([""], [])
    assert _digest(["ab", "c"], []) != _digest(["a", "bc"], [])
    # a sliced array (an offset into shared buffers) hashes its own values only
    arr = pa.array(["x", "y", "z", "w"])
    fp = layers.Fingerprint()
    fp.update(pa.table({"doc_id": arr.slice(1, 2)}))
    assert fp.record() == _digest(["y", "z"], [])


def test_integer_ids_hash_as_their_text():
    assert _digest([1, 2], [], pa.int64()) == _digest(["1", "2"], [])


def _full(root: str, rows=(3, 0, 5), with_ids=True) -> datasets.DatasetRef:
    ref = datasets.DatasetRef(root, "al", "ingest", "0" * 12)
    for i, n in enumerate(rows):
        t = {"text": pa.array([f"t{i}.{j}" for j in range(n)], pa.string())}
        if with_ids:
            t["doc_id"] = pa.array([f"d{i}.{j}" for j in range(n)], pa.string())
        datasets.write_shard(ref, datasets.shard_name(i), pa.table(t))
    datasets.commit(ref)
    return ref


def _unstamped_layer(base: datasets.DatasetRef) -> datasets.DatasetRef:
    """A columns layer written by code that does not stamp its shards (tests, tools, older writers)."""
    ref = datasets.DatasetRef(base.root, "al", "signals", "1" * 12)
    for name in layers.shard_names(base):
        n = layers.read_shard(base, name, ["text"]).num_rows
        datasets.write_shard(ref, name, pa.table({"n": pa.array(range(n), pa.int64())}))
    layers.commit_layer(ref, {"kind": "columns", "of": str(base)}, parents=[base])
    return ref


@pytest.mark.parametrize("with_ids", [True, False])
def test_an_unstamped_layer_gets_its_record_at_commit(tmp_path, with_ids):
    base = _full(str(tmp_path), with_ids=with_ids)
    sig = _unstamped_layer(base)
    files = datasets.read_manifest(sig)["files"]
    assert [f[layers.OF_ROWS] for f in files] == [3, 0, 5]
    assert all((layers.OF_DOC_IDS in f) == with_ids for f in files)
    assert all((layers.OF_ID_STATS in f) == with_ids for f in files)  # over a full version, from its footers
    if with_ids:
        assert [f[layers.OF_DOC_IDS] for f in files] == [
            layers.fingerprint(base, f["name"])[layers.OF_DOC_IDS] for f in files]
    assert layers.verify_alignment(sig) == []
    assert layers.read_table(sig).num_rows == 8


def test_a_shard_replaced_by_one_of_another_length_fails_the_open_and_the_catalog_view(tmp_path):
    from storage import catalog

    base = _full(str(tmp_path))
    sig = _unstamped_layer(base)
    name = datasets.shard_name(0)
    datasets.write_shard(base, name, pa.table({"text": ["a", "b"], "doc_id": ["d0.0", "d0.1"]}))  # a truncated copy
    with pytest.raises(layers.MisalignedLayer, match=rf"layer {sig} shard {name}: computed from 3 rows of .* 2"):
        list(layers.iter_shard(sig, name, ["n", "doc_id"]))
    with pytest.raises(layers.MisalignedLayer, match=rf"shard {name}"):
        layers.relation_sql(sig)
    with pytest.warns(UserWarning, match=rf"view of {sig} refuses queries: layer {sig} shard {name}"):
        con = catalog.connect(str(tmp_path))
    with pytest.raises(Exception, match=rf"layer {sig} shard {name}: computed from 3 rows"):
        con.sql('SELECT "n" FROM al__signals').fetchall()
    # the other shards are still readable one by one: only the broken one is refused
    assert layers.read_shard(sig, datasets.shard_name(2), ["n", "doc_id"]).num_rows == 5
