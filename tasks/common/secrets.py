"""One redactor for every string a server can put in front of us (error bodies, exception messages, generated text).

A server that rejects a request often quotes the request back, the `Authorization` header included, and not always
verbatim: JSON bodies escape `/` as `\\/` or write `\\u0073`, URLs percent-encode, HTTP Basic sends base64 of
`user:key`, dumps print hex. A truncated body can end in the middle of the key. So the redactor builds every one of
those encodings of the secret and removes any run of the text that is a fragment of one of them carrying
`MIN_FRAGMENT` or more characters of the secret; matching ignores case (hex and percent-escapes come in both).

Redact *before* truncating: cutting first can leave a prefix of the key that no longer equals the key.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import urllib.parse
from collections.abc import Iterable

MIN_FRAGMENT = 6  # secret characters a surviving fragment may not reach: 5 characters of a random key are ~30 bits
MASK = "***"


def _encodings(secret: str) -> list[tuple[str, int]]:
    """(an encoding of the secret, how many of its characters carry MIN_FRAGMENT characters of the secret)."""
    raw = secret.encode()
    out = [
        (secret, MIN_FRAGMENT),
        (json.dumps(secret)[1:-1], MIN_FRAGMENT),
        (json.dumps(secret)[1:-1].replace("/", "\\/"), MIN_FRAGMENT),
        ("".join(f"\\u{ord(c):04x}" for c in secret), 6 * MIN_FRAGMENT),
        (urllib.parse.quote(secret, safe=""), MIN_FRAGMENT),
        (urllib.parse.quote_plus(secret, safe=""), MIN_FRAGMENT),
        ("".join(f"%{b:02x}" for b in raw), 3 * MIN_FRAGMENT),
        (binascii.hexlify(raw).decode(), 2 * MIN_FRAGMENT),
    ]
    # base64 depends on where the secret starts modulo 3 (`user:key`, `:key`, `Bearer key` in a Basic header):
    # encode it after 0, 1 and 2 filler bytes and keep only the characters that do not depend on the filler or
    # on what follows (4 output characters per 3 input bytes).
    for pad in range(3):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            b64 = enc(b"\0" * pad + raw).decode().rstrip("=")
            start = (pad * 4 + 2) // 3  # the first character not mixing filler bits
            end = 4 * (pad + len(raw)) // 3  # past it, characters mix in the bits of what follows
            out.append((b64[start:end], (4 * MIN_FRAGMENT + 2) // 3))
    return out


class Redactor:
    """`Redactor(secret, *more)(text)` -> text with every encoding of every secret, and fragments of them, masked."""

    def __init__(self, *secrets: str | None):
        self._secrets = tuple(sorted({s for s in secrets if s}))
        self._grams: list[tuple[int, frozenset[str]]] = []
        for secret in secrets:
            if not secret:
                continue
            for encoded, n in _encodings(secret):
                encoded = encoded.lower()
                n = min(n, len(encoded))  # a secret shorter than MIN_FRAGMENT: the whole of it
                if n:
                    self._grams.append((n, frozenset(encoded[i : i + n] for i in range(len(encoded) - n + 1))))

    def __bool__(self) -> bool:
        return bool(self._grams)

    def __eq__(self, other) -> bool:
        return isinstance(other, Redactor) and other._secrets == self._secrets

    def __hash__(self) -> int:
        return hash(self._secrets)

    def __repr__(self) -> str:  # never the secret
        return f"Redactor({len(self._secrets)} secrets)"

    def __call__(self, text: str | None) -> str | None:
        if not text or not self._grams:
            return text
        low = text.lower()
        hit = bytearray(len(text))
        for n, grams in self._grams:
            # Every window of n characters inside a fragment is itself in `grams`, so marking the windows that
            # match covers every fragment of n or more characters, whatever its length.
            for i in range(len(low) - n + 1):
                if low[i : i + n] in grams:
                    hit[i : i + n] = b"\1" * n
        if not any(hit):
            return text
        parts, i = [], 0
        while i < len(text):
            j = i
            while j < len(text) and hit[j] == hit[i]:
                j += 1
            parts.append(MASK if hit[i] else text[i:j])
            i = j
        return "".join(parts)

    def all(self, texts: Iterable[str | None]) -> list[str | None]:
        return [self(t) for t in texts]


class _RedactingFilter(logging.Filter):
    """Rewrites a record's message through every live Redactor (a filter may change the record it passes)."""

    def __init__(self):
        super().__init__()
        self.redactors: list[Redactor] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if self.redactors:
            msg = record.getMessage()
            for r in self.redactors:
                msg = r(msg)
            record.msg, record.args = msg, ()
            if record.exc_info or record.exc_text:  # the traceback quotes the server too
                text = record.exc_text or logging.Formatter().formatException(record.exc_info)
                for r in self.redactors:
                    text = r(text)
                record.exc_text, record.exc_info = text, None
        return True


_FILTER = _RedactingFilter()


# httpx and httpcore's loggers (httpcore creates its own lazily, on first use: name them all up front)
HTTP_LOGGERS = ("httpx", "httpcore", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy",
                "httpcore.socks")


def guard_logs(redactor: Redactor, loggers: tuple[str, ...] = HTTP_LOGGERS) -> None:
    """Redact the records of the HTTP client's loggers: httpx logs the status line's reason phrase at INFO and
    httpcore's DEBUG trace quotes the raw header line it could not parse; both are server text. Logger filters do
    not apply to child loggers, so the filter goes on each named logger and on any existing child of one."""
    if not redactor or redactor in _FILTER.redactors:
        return
    _FILTER.redactors.append(redactor)
    names = [n for n in logging.Logger.manager.loggerDict if n.startswith(tuple(f"{p}." for p in loggers))]
    for name in {*loggers, *names}:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
