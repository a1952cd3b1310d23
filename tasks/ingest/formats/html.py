"""HTML main-text extraction (resiliparse by default, trafilatura on request): for HTML files, HTML fields of JSONL or
Parquet records, and WARC response records."""

from __future__ import annotations


def extract_html(html: str | bytes, *, extractor: str = "resiliparse", main_content: bool = True) -> str:
    """Main text of an HTML page (resiliparse by default: fast; trafilatura on request: more precise)."""
    if isinstance(html, bytes):
        from resiliparse.parse.encoding import bytes_to_str, detect_encoding

        html = bytes_to_str(html, detect_encoding(html))
    if extractor == "trafilatura":
        import trafilatura

        return trafilatura.extract(html, include_comments=False, favor_precision=main_content) or ""
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(html, main_content=main_content, alt_texts=False, links=False, list_bullets=True) or ""

