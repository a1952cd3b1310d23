"""Object-store requests, retried in one place: every S3 call storage makes goes through ``RetryingS3FileSystem``.

fsspec's ``s3`` protocol is registered to this subclass of s3fs's filesystem when the storage package is imported,
so every ``datasets.filesystem("s3://...")``, the catalog's DuckDB view of the root and the workers' shard writes
send their requests through ``_call_s3`` here (s3fs's single request choke point). There, a request that fails
transiently (connection refused or reset, a timeout, HTTP 5xx, 503 ``SlowDown``, 429) is retried with capped
exponential backoff and full jitter (Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog, 2015; the
policy AWS's own SDKs use), bounded by a number of attempts and a deadline, each retry logged as one line. When the
bound is reached the error is one line naming the operation and the object (``ObjectStoreError``). botocore's and
s3fs's own retry loops are switched off for this filesystem so the bound is the one configured here.

    QUARRY_S3_ATTEMPTS      attempts per request (default 8)
    QUARRY_S3_BACKOFF_S     first backoff ceiling in seconds (default 0.2), doubled per attempt ...
    QUARRY_S3_BACKOFF_MAX_S ... up to this ceiling (default 5)
    QUARRY_S3_DEADLINE_S    give up on a request after this long in all (default 60)
    QUARRY_S3_PART_BYTES    multipart part size for shard writes (default 50 MiB: a shard < 100 MiB is one PUT;
                            measured in README "Object-store I/O")

Secrets: an error or log line never carries the access key, the secret key, a session token or the userinfo of an
endpoint URL (``redact``): botocore messages can echo request parameters and endpoint URLs.

Request counts and bytes per operation are kept in ``STATS`` (benchmarks/objstore.py reads them).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import re
import threading
import time

log = logging.getLogger("quarry")


class StorageError(RuntimeError):
    """The storage root cannot be used (not writable, not a folder, unreachable); the message names the path."""


class ObjectStoreError(StorageError):
    """An object-store request still failing after the configured retries; one line naming operation and object."""


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def policy() -> tuple[int, float, float, float]:
    """(attempts, first backoff, backoff cap, deadline), read at each request so tests and runs can set them."""
    return (max(1, int(_env_float("QUARRY_S3_ATTEMPTS", 8))), _env_float("QUARRY_S3_BACKOFF_S", 0.2),
            _env_float("QUARRY_S3_BACKOFF_MAX_S", 5.0), _env_float("QUARRY_S3_DEADLINE_S", 60.0))


def part_bytes() -> int:
    """Multipart part size for writes (S3's minimum part is 5 MiB)."""
    return max(5 * 2**20, int(_env_float("QUARRY_S3_PART_BYTES", 50 * 2**20)))


# AWS error codes that mean "try again" (https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html)
_TRANSIENT_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed",
                    "Throttling", "ThrottlingException", "TooManyRequests", "503", "500", "502", "504", "429"}


def transient(e: BaseException) -> bool:
    """Whether a failed request may succeed if sent again (walks the cause chain: s3fs wraps botocore's errors)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            return False
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            err = response.get("Error") or {}
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
            return str(err.get("Code")) in _TRANSIENT_CODES or int(status) >= 500 or int(status) == 429
        name = type(e).__name__
        module = type(e).__module__ or ""
        if isinstance(e, (ConnectionError, TimeoutError, asyncio.TimeoutError)):
            return True
        if module.startswith(("aiohttp", "botocore", "urllib3")) and re.search(
                r"Connect|Timeout|Disconnect|Closed|Payload|HTTPClient|IncompleteRead|ResponseParser", name):
            return True
        e = e.__cause__ or e.__context__
    return False


def _why(e: BaseException) -> str:
    """One line: the S3 error code when the answer had one (s3fs turns ``SlowDown`` into a bare OSError), else the
    exception's type, and its first message line."""
    code, cur, seen = None, e, set()
    while cur is not None and id(cur) not in seen and code is None:
        seen.add(id(cur))
        response = getattr(cur, "response", None)
        if isinstance(response, dict):
            code = (response.get("Error") or {}).get("Code")
        cur = cur.__cause__ or cur.__context__
    text = (str(e).splitlines() or [""])[0]
    return f"{code or type(e).__name__}: {text}" if text else (code or type(e).__name__)


_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "FSSPEC_S3_KEY", "FSSPEC_S3_SECRET",
               "FSSPEC_S3_TOKEN")
_AKID_RE = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{12,}\b")
_USERINFO_RE = re.compile(r"(\w+://)[^/@\s]+@")


def redact(text: str, extra: tuple[str, ...] = ()) -> str:
    """``text`` without any credential this process holds (environment and fsspec config) or an endpoint's userinfo."""
    secrets = [os.environ.get(k) for k in _SECRET_ENV] + list(extra)
    try:
        import fsspec.config

        conf = fsspec.config.conf.get("s3", {})
        secrets += [conf.get(k) for k in ("key", "secret", "token")]
    except Exception:  # noqa: BLE001 - redaction must never fail
        pass
    for s in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(s, "***")
    text = _AKID_RE.sub("***", text)
    return _USERINFO_RE.sub(r"\1***@", text)


class _Stats:
    """Requests and payload bytes per S3 operation in this process (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.requests = collections.Counter()
        self.retries = collections.Counter()
        self.bytes_out = 0  # request bodies (PUT, UploadPart)
        self.bytes_in = 0  # response bodies announced (GET ContentLength)

    def snapshot(self) -> dict:
        with self.lock:
            return {"requests": dict(self.requests), "retries": dict(self.retries), "bytes_out": self.bytes_out,
                    "bytes_in": self.bytes_in}


STATS = _Stats()


def _target(kwargs: dict) -> str:
    bucket, key = kwargs.get("Bucket", ""), kwargs.get("Key") or kwargs.get("Prefix") or ""
    return f"s3://{bucket}/{key}" if bucket else "s3://"


def _make_class():
    import s3fs

    class RetryingS3FileSystem(s3fs.S3FileSystem):
        """s3fs with one bounded, logged retry loop around every request (see the module's docstring)."""

        retries = 1  # s3fs's own loop: one try; ours decides (a body read cut mid-stream is not retried by s3fs)

        def __init__(self, *args, **kwargs):
            config = dict(kwargs.pop("config_kwargs", None) or {})
            config.setdefault("retries", {"max_attempts": 1, "mode": "standard"})  # botocore: no hidden retries
            super().__init__(*args, config_kwargs=config, **kwargs)

        async def _call_s3(self, method, *akwarglist, **kwargs):
            attempts, base, cap, deadline = policy()
            t0 = time.monotonic()
            body = kwargs.get("Body")
            for attempt in range(1, attempts + 1):
                with STATS.lock:
                    STATS.requests[method] += 1
                    if isinstance(body, (bytes, bytearray, memoryview)):
                        STATS.bytes_out += len(body)
                try:
                    out = await super()._call_s3(method, *akwarglist, **kwargs)
                except Exception as e:
                    elapsed = time.monotonic() - t0
                    if not transient(e):
                        raise
                    why = redact(_why(e))
                    if attempt == attempts or elapsed >= deadline:
                        raise ObjectStoreError(
                            f"object store: {method} {_target(kwargs)} failed after {attempt} attempt(s) over "
                            f"{elapsed:.1f} s ({why}); nothing was committed by this request") from None
                    sleep = min(random.uniform(0, min(cap, base * 2 ** (attempt - 1))), deadline - elapsed)
                    with STATS.lock:
                        STATS.retries[method] += 1
                    log.warning(f"object store: {method} {_target(kwargs)}: {why}; "
                                f"retry {attempt}/{attempts - 1} in {sleep:.2f} s")
                    await asyncio.sleep(max(0.0, sleep))
                    continue
                if method == "get_object" and isinstance(out, dict):
                    with STATS.lock:
                        STATS.bytes_in += int(out.get("ContentLength") or 0)
                return out
            raise AssertionError("unreachable")

    return RetryingS3FileSystem


_INSTALLED: list = []


def install() -> None:
    """Make fsspec's ``s3``/``s3a`` protocols this retrying filesystem (a no-op without s3fs installed)."""
    if _INSTALLED:
        return
    try:
        cls = _make_class()
    except ImportError:
        return
    import fsspec

    for protocol in ("s3", "s3a"):
        fsspec.register_implementation(protocol, cls, clobber=True)
    _INSTALLED.append(cls)


def is_object_store(fs) -> bool:  # noqa: ANN001 - fsspec fs
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("s3", "s3a", "gs", "gcs", "abfs", "az")


def await_listed(list_fn, names, what: str) -> dict:  # noqa: ANN001
    """Poll a listing until it shows every name in ``names`` (an eventually consistent LIST can omit a key that was
    just written) or the deadline passes; returns the last listing. Names the writers reported are the truth: the
    caller refuses to commit while any is missing."""
    names = set(names)
    _, base, cap, deadline = policy()
    t0, attempt = time.monotonic(), 0
    while True:
        listed = list_fn()
        missing = names - set(listed)
        if not missing or time.monotonic() - t0 >= deadline:
            return listed
        attempt += 1
        sleep = min(cap, base * 2 ** attempt)
        log.warning(f"{what}: the listing omits {len(missing)} written shard(s) (e.g. {sorted(missing)[0]}); "
                    f"listing again in {sleep:.2f} s (eventual consistency)")
        time.sleep(sleep)
