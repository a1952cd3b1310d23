"""What a run prints and logs: the data's own messages, not colour codes, known-benign library chatter or progress bars.

``quiet()`` runs once, before Prefect and the flows load (flows/__init__.py):

* ``QUARRY_LOG_FILE=path``: every log record (the ``quarry`` logger, Prefect's flow/task loggers, libraries) is also
  written there, with ANSI escape sequences stripped (``PlainFormatter``: a log file is read with less/grep, where
  ``\\x1b[36m`` is noise);
* Ray's "Token authentication is enabled for this Ray cluster" on every local start is dropped: the local cluster
  listens on loopback only (ray_cluster/runtime.py). Every other Ray warning, the "disabled" one included, stays;
* fastText's ``load_model`` notice ("does not return WordVectorModel ... any more") is not printed: it is printed on
  every model load, says nothing about the data, and is the only thing fastText's ``eprint`` prints;
* ``TQDM_DISABLE=1`` inside flows: lm-eval's and HF's progress bars are carriage-return redraws that a Prefect log
  stores as hundreds of lines; the stages' own progress lines (the ``quarry`` logger) replace them. Ray workers
  started by the run inherit the environment;
* ``PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW=ignore``: the ``quarry`` logger outside a flow run (``--plan``,
  tests) would warn once per record that there is no run to send it to.
"""

from __future__ import annotations

import logging
import os
import re

# CSI sequences (colours, cursor moves) and OSC (hyperlinks); ECMA-48 5.4
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
BENIGN = {  # logger -> message prefixes known to be benign here
    "ray._private.authentication.authentication_token_setup": ("Token authentication is enabled for this Ray cluster",),
}
_done = False


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


class PlainFormatter(logging.Formatter):
    """A file handler's formatter: the record as text, without escape sequences (in the message or traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        return strip_ansi(super().format(record))


class KnownBenign(logging.Filter):
    """Drops exactly the messages listed in BENIGN for their logger; everything else passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        prefixes = BENIGN.get(record.name, ())
        return not (prefixes and str(record.msg).startswith(prefixes))


def file_handler(path: str) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(KnownBenign())
    return handler


def quiet() -> None:
    """Set the environment and filters above (idempotent); add the log file when QUARRY_LOG_FILE is set."""
    global _done
    if _done:
        return
    _done = True
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    for name in BENIGN:
        logging.getLogger(name).addFilter(KnownBenign())
    try:
        import fasttext.FastText as ft

        ft.eprint = lambda *args, **kwargs: None
    except ImportError:
        pass
    path = os.environ.get("QUARRY_LOG_FILE")
    if path:
        # Prefect's logging set-up first (prefect.main runs it): run later, a root logger that already has a handler
        # makes it drop its own root config, and the console went silent
        import prefect.main  # noqa: F401

        handler = file_handler(path)
        logging.getLogger().addHandler(handler)
        for name in ("prefect", "quarry"):  # loggers Prefect configures without propagation to the root
            if not logging.getLogger(name).propagate:
                logging.getLogger(name).addHandler(handler)
