"""One parser of the survivor priority for exact and MinHash dedup: the same specs accepted, the same error."""

import pytest

from tasks.dedup.exact import ExactDedupParams, keepers_reads
from tasks.dedup.minhash import MinhashDedupParams
from tasks.dedup.minhash_sql import clusters_reads
from tasks.dedup.priority import Priority


def test_parse_kinds_columns_and_orders():
    assert Priority.parse("longest") == Priority("longest")
    assert Priority.parse("lowest_doc_id") == Priority("lowest_doc_id")
    p = Priority.parse("meta.crawl_date:desc")  # dotted names and the last ':' splits
    assert (p.kind, p.column, p.order, p.descending) == ("column", "meta.crawl_date", "desc", True)
    assert not Priority.parse("score:asc").descending


@pytest.mark.parametrize("spec", ["", "shortest", "score", "score:up", "1col:asc", "a b:desc", None])
def test_both_dedups_refuse_the_same_specs_with_the_same_message(spec):
    errors = []
    for cls in (ExactDedupParams, MinhashDedupParams):
        with pytest.raises(ValueError, match="priority must be 'longest', 'lowest_doc_id'") as e:
            cls(priority=spec)
        errors.append(str(e.value))
    assert errors[0] == errors[1]


def test_minhash_params_still_check_their_other_fields():
    """The parser moved out of __post_init__; the checks beside it stay (a similarity of 1.5 once slipped through)."""
    with pytest.raises(ValueError, match="similarity"):
        MinhashDedupParams(similarity=1.5)
    with pytest.raises(ValueError, match="num_partitions"):
        MinhashDedupParams(num_partitions=0)
    with pytest.raises(ValueError, match="keys"):
        ExactDedupParams(keys=("title",))


def test_both_dedups_read_the_priority_column():
    ed = keepers_reads(ExactDedupParams(priority="quality:desc"), [])
    mh = clusters_reads(MinhashDedupParams(priority="quality:desc"), [])
    assert "quality" in ed and "quality" in mh and "text" not in ed and "text" not in mh
