"""The strict comparison of a document's shown output with what grpcurl printed."""

from __future__ import annotations

import pytest

from tests.docs.commands import Expected, MismatchError, Step, check_output

PRINTED = """{
  "instance_id": "58877e00-c89b-4cd3-92f2-8ae6fc8ac50c",
  "input": {
        "amount": 120
      },
  "start_time": "2026-12-06T10:32:48.006Z",
  "cursor": "MTc2NTAxNjM2ODAwNjAwMDpi"
}
"""
SHOWN = """{
  "instance_id": "0107d586-2f31-40fc-8970-aac06944b829",
  "input": {
        "amount": 120
      },
  "start_time": "2026-11-27T16:42:53.883Z",
  "cursor": "MTc2NDI2MTc3Mzg4MzAwMDph"
}
"""


def step(kind: str, body: str) -> Step:
    return Step("test", "grpcurl", "x/GetStatus", None, Expected(kind, body))


def test_strict_frees_only_ids_times_and_cursors() -> None:
    ids = check_output(step("json", SHOWN), 0, PRINTED, "", {}, strict=True)
    assert ids == {"0107d586-2f31-40fc-8970-aac06944b829": "58877e00-c89b-4cd3-92f2-8ae6fc8ac50c"}


def test_strict_holds_the_layout_that_json_comparison_forgives() -> None:
    tidy = SHOWN.replace('        "amount": 120\n      },', '    "amount": 120\n  },')
    tidy = tidy.replace("MTc2NDI2MTc3Mzg4MzAwMDph", "MTc2NTAxNjM2ODAwNjAwMDpi")
    check_output(step("json", tidy), 0, PRINTED, "", {}, strict=False)
    with pytest.raises(MismatchError, match="stdout line 4"):
        check_output(step("json", tidy), 0, PRINTED, "", {}, strict=True)


def test_strict_wants_every_line_of_an_error() -> None:
    printed = "ERROR:\n  Code: InvalidArgument\n  Message: bad\n  Details:\n  1)\t{}\n"
    shown = "ERROR:\n  Code: InvalidArgument\n  Message: bad\n"
    check_output(step("error", shown), 1, "", printed, {}, strict=False)
    with pytest.raises(MismatchError, match="expected 3 lines, got 5"):
        check_output(step("error", shown), 1, "", printed, {}, strict=True)
    with pytest.raises(MismatchError, match="stderr line 5"):
        check_output(step("error", printed.replace("\t", "  ")), 1, "", printed, {}, strict=True)
    check_output(step("error", printed), 1, "", printed, {}, strict=True)
