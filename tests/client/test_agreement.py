"""The client's own copies of the sidecar's names agree with the sidecar's.

okra-client imports nothing from the sidecar, so it spells out the reasons, statuses and
schedule policies itself; these tests fail when the two drift apart.
"""

from __future__ import annotations

from enum import StrEnum

import pytest
from okra_client import WorkflowStatus, errors
from okra_client.schedules import CatchUpPolicy, OverlapPolicy, ScheduleSource

from okra_sidecar import errors as sidecar_errors
from okra_sidecar import schedules
from okra_sidecar.instances import InstanceStatus


def test_the_reasons_and_which_are_retryable_are_the_sidecars() -> None:
    sent = {r.value for r, spec in sidecar_errors.REASONS.items() if spec.sent}
    retryable = {r.value for r, spec in sidecar_errors.REASONS.items() if spec.retryable}
    assert errors.REASONS == sent
    assert errors.RETRYABLE_REASONS == retryable
    assert errors.ERROR_DOMAIN == sidecar_errors.ERROR_DOMAIN


@pytest.mark.parametrize(
    ("client", "sidecar"),
    [
        (WorkflowStatus, InstanceStatus),
        (OverlapPolicy, schedules.OverlapPolicy),
        (CatchUpPolicy, schedules.CatchUpPolicy),
        (ScheduleSource, schedules.ScheduleSource),
    ],
)
def test_the_enums_are_the_sidecars(client: type[StrEnum], sidecar: type[StrEnum]) -> None:
    assert {m.name: m.value for m in client} == {m.name: m.value for m in sidecar}


def test_finished_statuses_agree() -> None:
    assert {s.value for s in WorkflowStatus if s.finished} == {
        s.value for s in InstanceStatus if s.finished
    }
