"""A corpus of bad inputs, made by the test in tests/data/bad/: each gets a clear error naming the file and the
position, or a quarantined row with the reason; the good data around it is still processed."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
import yaml

import datasets_cfg
from ray_cluster import runtime
from storage import catalog, datasets
from tasks.ingest.sources import IngestSource
from tests.stages import ingest

BAD = Path(__file__).resolve().parents[1] / "data" / "bad"
GOOD = [{"text": f"good document {i} with enough words to be a document", "url": f"http://ok/{i}"} for i in range(5)]


def _jsonl(rows) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _warc_record(uri: str, body: bytes, declared: int | None = None) -> bytes:
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + body
    length = len(http) if declared is None else declared
    head = (
        "WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:1>\r\nWARC-Date: 2024-01-01T00:00:00Z\r\n"
        f"WARC-Target-URI: {uri}\r\nContent-Type: application/http; msgtype=response\r\nContent-Length: {length}\r\n\r\n"
    ).encode()
    return head + http + b"\r\n\r\n"


# file name -> (bytes, expected good documents, expected quarantine reasons (substrings))
def _corpus() -> dict[str, tuple[bytes, int, list[str]]]:
    good_html = b"<html><body><article><p>" + b"A real paragraph of text. " * 20 + b"</p></article></body></html>"
    big = json.dumps({"text": "x" * (50 * 1024 * 1024)}).encode() + b"\n"
    payload = _jsonl(GOOD * 40)
    gz = gzip.compress(payload)
    return {
        "truncated.jsonl.gz": (gz[: len(gz) // 2], None, ["truncated or corrupt archive"]),
        "invalid_json.jsonl": (_jsonl(GOOD[:2]) + b'{"text": "unterminated\n' + b"not json at all\n" + _jsonl(GOOD[2:]), 5, ["invalid JSON", "invalid JSON"]),
        "wrong_types.jsonl": (_jsonl([{"text": 12}, {"text": None}, {"text": ["a"]}, *GOOD]), 5, ["not a string", "missing", "not a string"]),
        "non_utf8.jsonl": (_jsonl(GOOD[:1]) + '{"text": "déjà vu"}\n'.encode("latin-1") + '{"text": "naïve"}\n'.encode("cp1252") + _jsonl(GOOD[1:]), 5, ["non-UTF-8", "non-UTF-8"]),
        "nul_bytes.jsonl": (_jsonl([{"text": "a\u0000b"}, *GOOD]), 5, ["NUL byte"]),
        "gigantic.jsonl": (big + _jsonl(GOOD), 5, ["too large"]),
        "empty.jsonl": (b"", 0, ["no records in file"]),
        "bad_length.warc": (_warc_record("http://ok/1", good_html) + _warc_record("http://bad/2", good_html, declared=999_999), 1, ["bytes missing"]),
        "no_body.html": (b"<html><head><title>t</title></head></html>", 0, ["no extractable text"]),
    }


@pytest.fixture(scope="module")
def bad_dir() -> Path:
    BAD.mkdir(parents=True, exist_ok=True)
    for name, (data, _, _) in _corpus().items():
        (BAD / name).write_bytes(data)
    return BAD


def test_every_bad_file_is_quarantined_with_reasons_and_good_rows_survive(bad_dir, tmp_path, capsys):
    corpus = _corpus()
    sources = [IngestSource(path=str(bad_dir / name), domain="web") for name in sorted(corpus)]
    root = str(tmp_path / "store")
    ref = ingest(sources, root=root, dataset="bad", docs_per_shard=1000, profile=runtime.load_profile("serial"))
    con = catalog.connect(root)
    tried = quarantined = 0
    for name, (_, n_good, reasons) in sorted(corpus.items()):
        src = str(bad_dir / name)
        got = con.execute("select count(*) from bad__ingest where source = ?", [src]).fetchone()[0]
        bad = [r[0] for r in con.execute("select reason from bad__quarantine where source = ? order by position", [src]).fetchall()]
        if n_good is not None:
            assert got == n_good, name
        else:
            assert got > 0, name  # what came before the cut is kept
        assert len(bad) == len(reasons), (name, bad)
        for want, have in zip(reasons, bad, strict=True):
            assert want in have, (name, bad)
        tried += 1
        quarantined += len(bad)
    positions = [r[0] for r in con.execute("select position from bad__quarantine").fetchall()]
    assert all(p.startswith(("line:", "offset:", "file", "record:")) for p in positions)
    with capsys.disabled():
        print(f"\nbad-input corpus: {tried} files tried, {quarantined} records quarantined, {datasets.read_manifest(ref)['num_rows']} good documents kept")


def test_recipe_with_unknown_key_or_wrong_type_names_file_and_key(tmp_path):
    for body, key in (({"dataset": "x", "ingest": {"sources": [{"path": "a"}]}, "stroage_root": "/tmp"}, "stroage_root"),
                      ({"dataset": "x", "ingest": {"sources": [{"path": "a"}], "docs_per_shard": "lots"}}, "ingest.docs_per_shard")):
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(body))
        with pytest.raises(datasets_cfg.RecipeError) as e:
            datasets_cfg.load(path)
        assert str(path) in str(e.value) and key in str(e.value)


def test_unwritable_storage_root_is_a_clear_error_naming_it(tmp_path, bad_dir):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the storage root should be")
    root = str(blocker / "store")
    if os.geteuid() != 0:  # as a normal user a read-only folder is the realistic case
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        root = str(ro / "store")
    with pytest.raises(datasets.StorageError, match="not writable") as e:
        ingest([IngestSource(path=str(bad_dir / "nul_bytes.jsonl"))], root=root, dataset="x", docs_per_shard=10,
               profile=runtime.load_profile("serial"))
    assert root in str(e.value)


def test_missing_input_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        ingest([IngestSource(path=str(tmp_path / "nowhere.jsonl"))], root=str(tmp_path / "s"), dataset="x",
               docs_per_shard=10, profile=runtime.load_profile("serial"))
