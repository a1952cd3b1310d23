"""PII on real documents: planted e-mails, IPs, phones and keys in real C4 text are all redacted (datatrove's
PIIFormatter on the same documents as the baseline), and the shared code sample's versions and hashes survive."""

from __future__ import annotations

import json
import random
import re

import pyarrow as pa
import pytest

from ray_cluster import runtime
from storage import datasets
from tasks.filter import pii
from tasks.ingest.sources import IngestSource
from tests import stages
from tests.conftest import shared_path

SERIAL = runtime.Profile(name="serial", engine="serial")


def _planted(n_docs: int = 60, seed: int = 0) -> tuple[list[str], list[tuple[str, str]]]:
    """Real C4 documents, each with a few planted values inside sentences; returns (texts, [(type, value)])."""
    rng = random.Random(seed)
    c4 = [json.loads(x)["text"] for x in shared_path("web", "c4_sample", "c4_sample.jsonl").read_text().splitlines()]
    names = ["maria.lopez", "j_smith", "anna+news", "k.tanaka", "o'neil", "lee2024"]
    hosts = ["gmail.com", "mail.example.org", "uni-heidelberg.de", "company.co.uk"]
    b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

    def value(kind: str) -> str:
        if kind == "email":
            return f"{rng.choice(names)}{rng.randint(1, 99)}@{rng.choice(hosts)}"
        if kind == "ipv4":
            return f"{rng.choice([8, 23, 51, 77, 104, 185, 203])}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        if kind == "ipv6":
            return f"2001:4860:{rng.randint(1, 0xffff):x}::{rng.randint(1, 0xffff):x}"
        if kind == "phone":
            return rng.choice([f"+1 {rng.randint(201, 989)}-555-{rng.randint(1000, 9999)}",
                               f"({rng.randint(201, 989)}) 555-{rng.randint(1000, 9999)}",
                               f"+44 20 7946 {rng.randint(1000, 9999)}", f"+49 30 {rng.randint(1000000, 9999999)}"])
        if kind == "aws_key":
            return "AKIA" + "".join(rng.choice(b64[:26] + "234567") for _ in range(16))
        if kind == "github_token":
            return "ghp_" + "".join(rng.choice(b64) for _ in range(36))
        return "sk-proj-" + "".join(rng.choice(b64) for _ in range(40))  # an OpenAI-style key

    kinds = ["email", "ipv4", "ipv6", "phone", "aws_key", "github_token", "openai_key"]
    texts, planted = [], []
    for text in c4[:n_docs]:
        sentences = text.split(". ")
        for kind in rng.sample(kinds, 3):
            v = value(kind)
            planted.append((kind, v))
            pos = rng.randrange(len(sentences))
            sentences[pos] += f" (contact: {v})" if kind != "openai_key" else f", key={v}"
        texts.append(". ".join(sentences))
    return texts, planted


def _recall(planted, texts_out) -> dict[str, float]:
    joined = "\n".join(texts_out)
    by: dict[str, list[bool]] = {}
    for kind, v in planted:
        by.setdefault(kind, []).append(v not in joined)
    return {k: sum(x) / len(x) for k, x in by.items()}


def test_every_planted_value_is_redacted_and_recall_is_at_least_datatroves():
    from datatrove.pipeline.formatters import PIIFormatter

    texts, planted = _planted()
    out = pii.pii(pa.table({"text": texts}), pii.PiiParams())
    ours = _recall(planted, out.column("text").to_pylist())
    dt = PIIFormatter()
    theirs = _recall(planted, [dt.format(t) for t in texts])
    assert all(r == 1.0 for r in ours.values()), ours
    assert all(ours[k] >= theirs.get(k, 0.0) for k in ours), (ours, theirs)
    assert theirs["email"] == 1.0 and theirs["ipv4"] == 1.0 and theirs["phone"] == 0.0  # what datatrove covers
    counts = {k: sum(out.column(f"pii_{k}").to_pylist()) for k in ("email", "ip", "phone", "secret")}
    want = {"email": 0, "ip": 0, "phone": 0, "secret": 0}
    for kind, _ in planted:
        want[{"ipv4": "ip", "ipv6": "ip", "aws_key": "secret", "github_token": "secret", "openai_key": "secret"}.get(kind, kind)] += 1
    # C4 text itself holds a few real phones/e-mails (business pages): counts are at least the planted ones
    assert all(counts[k] >= want[k] for k in want) and sum(counts.values()) <= sum(want.values()) + 15
    assert "<EMAIL>" in "".join(out.column("text").to_pylist())


_VERSION = re.compile(r"(?<![\w.])v?\d+\.\d+\.\d+(?:[.-][\w]+)?(?![\w.])")
_HASH = re.compile(r"(?<![\w])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,64}(?![\w])")


def test_no_version_string_or_hash_of_the_code_sample_is_touched():
    code = [json.loads(x)["text"] for x in shared_path("domains", "github_code", "github_code_sample.jsonl")
            .read_text().split("\n") if x.strip()]  # fmt: skip
    out = pii.pii(pa.table({"text": code}), pii.PiiParams()).column("text").to_pylist()
    checked = 0
    for before, after in zip(code, out, strict=True):
        for rx in (_VERSION, _HASH):
            for m in set(rx.findall(before)):
                if re.fullmatch(r"v?(\d{1,3}\.){3}\d{1,3}", m):
                    continue  # a dotted quad is an address, not a version
                assert after.count(m) == before.count(m), m
                checked += 1
    assert checked > 500  # the sample holds many version pins and commit hashes
    # private and loopback addresses in configs stay (datatrove's only_remove_public_ips)
    kept = pii.find_pii("MASTER_ADDR=127.0.0.1 host 192.168.1.20 bind 0.0.0.0 slice x[1::2]")
    assert kept == ("MASTER_ADDR=127.0.0.1 host 192.168.1.20 bind 0.0.0.0 slice x[1::2]",
                    {"secret": 0, "email": 0, "ip": 0, "phone": 0})


def test_private_key_blocks_become_one_placeholder():
    key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgwMbRvI0MBZhpI\n-----END RSA PRIVATE KEY-----"
    text, counts = pii.find_pii(f"config:\n{key}\nend")
    assert text == "config:\n<PRIVATE_KEY>\nend" and counts["secret"] == 1


def test_redact_and_flag_through_the_executor(tmp_path):
    texts, planted = _planted(n_docs=30, seed=1)
    clean = [json.loads(x)["eng_Latn"] for x in shared_path("clean", "wikipedia_1k", "wikipedia.jsonl")
             .read_text().splitlines()[:20]]  # fmt: skip
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts + clean))
    docs = stages.ingest([IngestSource(path=str(path), domain="web")], root=str(tmp_path / "s"), dataset="pii",
                         docs_per_shard=25, profile=SERIAL)
    red = datasets.read_table(stages.run("pii", [docs], pii.PiiParams(mode="redact"), SERIAL))
    assert red.num_rows == 50 and _recall(planted, red.column("text").to_pylist()) == dict.fromkeys(
        {k for k, _ in planted}, 1.0)
    assert "keep" not in red.column_names  # redact drops nothing
    flag = datasets.read_table(stages.run("pii", [docs], pii.PiiParams(mode="flag"), SERIAL))
    assert flag.column("text").to_pylist() == datasets.read_table(docs).column("text").to_pylist()
    reasons = flag.column("drop_reason").to_pylist()
    totals = flag.column("pii_total").to_pylist()
    assert all((r is None) == (t == 0) for r, t in zip(reasons, totals, strict=True))
    assert all(r.startswith("pii_") for r in reasons if r) and sum(r is not None for r in reasons) >= 30
    assert {r for r in reasons if r} <= {"pii_secret", "pii_email", "pii_ip", "pii_phone"}
    # the columns layer stores the stage with the reason: set exactly where a row is dropped
    assert flag.column("drop_stage").to_pylist() == [None if r is None else "pii" for r in reasons]


def test_bad_params_name_the_key():
    with pytest.raises(ValueError, match="mode"):
        pii.PiiParams(mode="mask")
    with pytest.raises(ValueError, match="types"):
        pii.PiiParams(types=("email", "ssn"))
