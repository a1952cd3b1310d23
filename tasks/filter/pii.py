"""PII: find e-mail addresses, IP addresses (v4/v6), phone numbers and secrets (API keys, private keys) and either
redact them with typed placeholders or flag the document.

Per document: `pii_email`, `pii_ip`, `pii_phone`, `pii_secret` (replacements/matches per type) and `pii_total`.
`mode: redact` rewrites `text` (`<EMAIL>`, `<IP_ADDRESS>`, `<PHONE>`, `<SECRET>`, `<PRIVATE_KEY>`) and drops nothing;
`mode: flag` leaves the text and drops a document with any match as `drop_reason = pii_<type>` (the first type in
the order below; first failing rule wins, as in quality_filter).

What counts, and why it is not a false positive on code (the shared code sample's versions, hashes, timestamps):
* secrets first (so their digits never look like phones): PEM private-key blocks (RFC 7468 labels), and
  provider key formats with a fixed prefix and length, the patterns secret scanners such as detect-secrets and
  GitHub secret scanning document: AWS access key ids `AKIA`/`ASIA` + 16, GitHub tokens `gh[pousr]_` + 36,
  Slack `xox[abposr]-`, Stripe `sk_live_`/`rk_live_`, Google `AIza` + 35, OpenAI/Anthropic `sk-`/`sk-ant-`/
  `sk-proj-` + 20 or more. A bare hex digest (a git sha, a sha256) has no prefix and is never a secret here.
* e-mail: RFC 5322's common subset (dot-atom local part, dotted domain with a 2-24 letter TLD), as datatrove's
  `PIIFormatter` (from BigScience's PII pipeline) matches it.
* IPs: candidates parsed by `ipaddress` (an IPv6 one needs 3 colons or a 3-hex-digit group: `1::2` is a
  slice); by default only globally routable addresses count (`public_ips_only`,
  datatrove's `only_remove_public_ips`): 127.0.0.1, 10/8, 0.0.0.0 in a config are not personal. A dotted quad right
  after `v`, `==` or `version` is a version number, not an address.
* phones: E.164 (`+` and 8-15 digits, ITU-T E.164) or a NANP-shaped 3-3-4 number with separators; 10-15 digits
  in all. Dates (4-2-2), times and versions have too few digits per group to match.

    out = pii(batch, PiiParams(mode="redact"))
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import pyarrow as pa

from tasks.common.stage import implements
from tasks.common.verdict import VERDICT, fold_verdict

TYPES = ("secret", "email", "ip", "phone")
PLACEHOLDERS = {"email": "<EMAIL>", "ip": "<IP_ADDRESS>", "phone": "<PHONE>", "secret": "<SECRET>"}
PRIVATE_KEY_PLACEHOLDER = "<PRIVATE_KEY>"
COUNT_COLUMNS = tuple(f"pii_{t}" for t in ("email", "ip", "phone", "secret")) + ("pii_total",)

_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]{16,16384}?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----"
)
_SECRET = re.compile(
    r"(?<![A-Za-z0-9_/+-])(?:"
    r"(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{36,255}"
    r"|github_pat_[A-Za-z0-9_]{60,255}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,250}"
    r"|(?:sk|rk)_live_[A-Za-z0-9]{20,247}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|sk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,250}"
    r")(?![A-Za-z0-9_])"
)
_SECRET_ANCHORS = ("AKIA", "ASIA", "gh", "xox", "_live_", "AIza", "sk-")
_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,64}(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,64}){0,8}"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,24}(?![\w-])"
)
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:.])")
_VERSION_BEFORE = re.compile(r"(?:[vV]|==|>=|<=|~=|version\s?|Version\s?)$")
_PHONE = re.compile(
    r"(?<![\w+.-])(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"
    r"|(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}"
    r")(?![\w]|[.-]\d)"
)


@dataclass(frozen=True, kw_only=True, slots=True)
class PiiParams:
    """PII settings.

    mode: "redact" (rewrite text with typed placeholders) or "flag" (keep text; drop documents with PII).
    types: which of secret, email, ip, phone to look for.
    public_ips_only: only globally routable addresses are PII (datatrove's default).
    """

    mode: str = "redact"
    types: tuple[str, ...] = TYPES
    public_ips_only: bool = True
    text_column: str = "text"

    def __post_init__(self) -> None:
        if self.mode not in ("redact", "flag"):
            raise ValueError(f"mode must be 'redact' or 'flag', got {str(self.mode)[:40]!r}")
        unknown = [str(t)[:20] for t in self.types if t not in TYPES]
        if unknown or not self.types:
            raise ValueError(f"types must be a non-empty subset of {TYPES}, got {unknown or list(self.types)}")


def _ip_ok(text: str, m: re.Match, public_only: bool) -> bool:
    try:
        addr = ipaddress.ip_address(m.group(0))
    except ValueError:
        return False
    if addr.version == 4 and _VERSION_BEFORE.search(text[max(0, m.start() - 8) : m.start()]):
        return False
    if addr.version == 6 and m.group(0).count(":") < 3 and max(map(len, m.group(0).split(":"))) < 3:
        return False  # `1::2`, `0::2`: Python/NumPy slices, not addresses
    return addr.is_global if public_only else True


def _phone_ok(m: re.Match) -> bool:
    digits = sum(c.isdigit() for c in m.group(0))
    return 10 <= digits <= 15


def find_pii(text: str, params: PiiParams = PiiParams()) -> tuple[str, dict[str, int]]:
    """(redacted text, matches per type). Types are replaced in TYPES order, so a key's digits never count as a
    phone and an e-mail's domain never as an address."""
    counts = dict.fromkeys(TYPES, 0)
    wanted = set(params.types)
    # each pattern runs only where its anchor occurs (a substring test is ~100x cheaper than a regex scan)
    if "secret" in wanted:
        n = k = 0
        if "PRIVATE KEY-----" in text:
            text, n = _PRIVATE_KEY.subn(PRIVATE_KEY_PLACEHOLDER, text)
        if any(a in text for a in _SECRET_ANCHORS):
            text, k = _SECRET.subn(PLACEHOLDERS["secret"], text)
        counts["secret"] = n + k
    if "email" in wanted and "@" in text:
        text, counts["email"] = _EMAIL.subn(PLACEHOLDERS["email"], text)
    if "ip" in wanted:
        for rx, anchor in ((_IPV6, ":"), (_IPV4, ".")):
            if anchor in text:
                text = _sub_checked(rx, text, "ip", counts, lambda m, t: _ip_ok(t, m, params.public_ips_only))
    if "phone" in wanted:
        text = _sub_checked(_PHONE, text, "phone", counts, lambda m, t: _phone_ok(m))
    return text, counts


def _sub_checked(rx: re.Pattern, text: str, kind: str, counts: dict[str, int], ok) -> str:
    parts, last = [], 0
    for m in rx.finditer(text):
        if m.group(0) and ok(m, text):
            parts.append(text[last : m.start()])
            parts.append(PLACEHOLDERS[kind])
            counts[kind] += 1
            last = m.end()
    if not parts:
        return text
    parts.append(text[last:])
    return "".join(parts)


@implements("pii")
def pii(batch: pa.Table, params: PiiParams = PiiParams()) -> pa.Table:
    """The same rows in the same order with the pii_* counts; `text` redacted (redact), or the verdict
    (keep/drop_reason/drop_stage) folded (flag)."""
    if params.text_column not in batch.column_names:
        raise ValueError(f"pii needs a {params.text_column!r} column, got {batch.column_names}")
    texts = batch.column(params.text_column).to_pylist()
    new_texts, per_type, reasons = [], {t: [] for t in TYPES}, []
    for t in texts:
        if t is None:
            new_texts.append(None)
            for k in TYPES:
                per_type[k].append(None)
            reasons.append(None)
            continue
        red, counts = find_pii(t, params)
        new_texts.append(red)
        for k in TYPES:
            per_type[k].append(counts[k])
        reasons.append(next((f"pii_{k}" for k in TYPES if counts[k]), None))
    out = batch.drop_columns([c for c in COUNT_COLUMNS if c in batch.column_names])
    for k in ("email", "ip", "phone", "secret"):
        out = out.append_column(f"pii_{k}", pa.array(per_type[k], pa.int32()))
    totals = [None if t is None else sum(per_type[k][i] for k in TYPES) for i, t in enumerate(texts)]
    out = out.append_column("pii_total", pa.array(totals, pa.int32()))
    if params.mode == "redact":
        idx = out.schema.get_field_index(params.text_column)
        return out.set_column(idx, params.text_column, pa.array(new_texts, pa.string()))
    return fold_verdict(out, reasons, stage="pii")


def pii_reads(params: PiiParams, available: list[str]) -> list[str]:
    """Columns the stage reads (it rewrites text in redact mode, the verdict in flag mode, adds pii_*)."""
    return [params.text_column, *(c for c in VERDICT if c in available and params.mode == "flag")]
