"""The reason tables of docs/errors.md, rendered from okra_sidecar.errors.REASONS.

`python -m tests.docs.errors_table` rewrites them in place (`make errors-doc`);
tests/docs/test_errors_doc.py fails while the document and the catalog differ.
"""

from __future__ import annotations

from pathlib import Path

from okra_sidecar.errors import REASONS

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
BEGIN = "<!-- reasons: generated from okra_sidecar/errors.py by `make errors-doc` -->"
END = "<!-- end of reasons -->"


def render(*, sent: bool) -> str:
    rows = ["| Reason | Code | Retry | What to do |", "|---|---|---|---|"]
    for reason, spec in REASONS.items():
        if spec.sent == sent:
            retry = "yes" if spec.retryable else "no"
            rows.append(f"| `{reason}` | `{spec.code}` | {retry} | {spec.action} |")
    return "\n".join(rows)


def render_section() -> str:
    return "\n\n".join(
        [
            BEGIN,
            "Sent to callers:",
            render(sent=True),
            "Recorded in the log, an instance's history or a schedule's last firing, never "
            "returned by an rpc:",
            render(sent=False),
            END,
        ]
    )


def rewritten(text: str) -> str:
    """`text` with its generated section replaced by the current one."""
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return head + render_section() + tail


if __name__ == "__main__":
    DOC.write_text(rewritten(DOC.read_text()))
