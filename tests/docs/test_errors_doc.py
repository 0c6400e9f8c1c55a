"""docs/errors.md lists exactly the reasons of okra_sidecar/errors.py."""

from __future__ import annotations

from tests.docs.errors_table import BEGIN, DOC, END, rewritten


def test_errors_doc_matches_the_catalog() -> None:
    text = DOC.read_text()
    assert BEGIN in text and END in text
    assert rewritten(text) == text, "docs/errors.md is stale: run `make errors-doc`"
