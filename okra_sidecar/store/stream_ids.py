"""Stream entry ids given back by callers (cursors, task ids), checked before Redis sees them."""

from __future__ import annotations

import re

# ASCII digits only: `\d` also matches other scripts' digits, which Redis refuses.
_STREAM_ID_RE = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
MAX_PART = 2**64 - 1
FIRST = (0, 0)
LAST = (MAX_PART, MAX_PART)


def parse_stream_id(text: str) -> tuple[int, int] | None:
    """`ms-seq` as two integers, or None if Redis would refuse it as an entry id."""
    match = _STREAM_ID_RE.fullmatch(text)
    if match is None:
        return None
    ms, seq = int(match.group(1)), int(match.group(2))
    if ms > MAX_PART or seq > MAX_PART:
        return None
    return ms, seq


__all__ = ["FIRST", "LAST", "MAX_PART", "parse_stream_id"]
