"""The fields the signal kernels parse besides the text (issue 35): a URL urllib refuses gives no UT1 domain
instead of failing the batch, and any `lang` value falls back to the default language."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.signals.quality_signals import QualitySignalsParams, quality_signals, source_domain

_PARTS = st.sampled_from(["http://", "[", "]", "::1", ":", "abc", "99999", "-1", "/", "example.com", "\u0663", " ",
                          "\x00", "[::1]", "%zz", "@"])


@settings(max_examples=200, deadline=None)
@given(st.lists(_PARTS, max_size=8).map("".join) | st.text(max_size=30))
def test_source_domain_never_raises(url):
    host = source_domain(url)
    assert host is None or isinstance(host, str)


def test_quality_signals_keeps_every_row_whatever_the_url_and_lang():
    urls = ["http://example.com:abc/page", "http://[::1/x", "http://example.com:99999/", None, "https://ok.example/"]
    langs = ["en", "xx-!!", "", None, "de_AT"]
    batch = pa.table({"text": ["Some words in a sentence."] * 5, "url": urls, "lang": langs})
    out = quality_signals(batch, QualitySignalsParams())
    assert out.num_rows == batch.num_rows
    assert out.column("rps_doc_word_count").null_count == 0
