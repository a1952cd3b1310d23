"""A real `quarry run` with a log file: the file holds no ANSI escape codes, the known-benign library chatter (Ray's
token notice, fastText's load_model notice, tqdm bars) is gone from the file and the console, and a real warning
(a recipe section that runs for nothing) is still in both."""

import os
import subprocess
import sys

import yaml

from services import logs
from tests.conftest import REPO, shared_path

NOISE = ("Token authentication is enabled", "`load_model` does not return", "it/s]")


def test_a_small_flow_logs_plain_text_without_benign_noise_and_keeps_real_warnings(tmp_path):
    src = shared_path("web", "c4_sample", "c4_sample.jsonl")
    recipe = tmp_path / "noise.yaml"
    recipe.write_text(yaml.safe_dump({
        "dataset": "noise", "storage_root": str(tmp_path / "store"), "cluster": "local",
        "ingest": {"docs_per_shard": 20, "sources": [{"path": str(src), "domain": "web", "lang": "en", "limit": 40}]},
        "language_id": {},  # fastText in a Ray worker: its load_model notice
        "heldout": {"fraction": 0.1, "seed": 0},  # no evaluate section: a real warning that must stay
    }))  # fmt: skip
    log_file = tmp_path / "run.log"
    env = {**os.environ, "QUARRY_LOG_FILE": str(log_file), "PYTHONPATH": str(REPO)}
    env.pop("TQDM_DISABLE", None)
    run = subprocess.run([sys.executable, "-m", "quarry_cli", "run", "curate", str(recipe)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    console = run.stdout + run.stderr
    assert run.returncode == 0, console[-3000:]
    text = log_file.read_text()
    assert "curate finished" in run.stdout
    assert "\x1b" not in text  # no escape sequence of any kind in the file
    for noise in NOISE:
        assert noise not in text and noise not in console, noise
    real = "`heldout` without `evaluate`"
    assert real in text and real in console
    assert "language_id" in text  # the stage's own lines are there


def test_the_formatter_strips_colour_and_hyperlinks_and_the_filter_drops_only_the_benign_line():
    import logging

    rec = logging.LogRecord("quarry", logging.WARNING, __file__, 1, "\x1b[1;31mred\x1b[0m \x1b]8;;http://x\x1b\\link"
                            "\x1b]8;;\x1b\\ done", None, None)  # fmt: skip
    assert logs.PlainFormatter("%(message)s").format(rec) == "red link done"
    name = next(iter(logs.BENIGN))
    keep = logging.LogRecord(name, logging.WARNING, __file__, 1, "Token authentication is disabled for this Ray "
                             "cluster. Anyone with network access ...", None, None)  # fmt: skip
    drop = logging.LogRecord(name, logging.WARNING, __file__, 1, "Token authentication is enabled for this Ray "
                             "cluster. Set RAY_AUTH_MODE=disabled to opt out.", None, None)  # fmt: skip
    assert logs.KnownBenign().filter(keep) and not logs.KnownBenign().filter(drop)
