"""Policy timeouts, enforced by the runner around the pure interpreter.

Two limits are fixed on an instance when it is created, from the policy set that allowed the
Run: a deadline for the whole instance (`policy.workflow.maxDurationMinutes`) and a timeout for
each step it blocks in (`policy.workflow.defaultTimeoutMs`, for steps whose definition sets no
`timeout` of its own). The sidecar's `maxInstanceDuration` sets the same deadline when it is the
tighter one (the instance records which: `deadline_source`). Each commit arms a timer for the
nearer of them; the turn that finds one passed applies `policy.workflow.timeoutAction`: `fail`
the instance with a timeout error, `cancel` it, or `continue` (record the event, keep going,
and warn again a step timeout later).
Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from okra_sidecar.errors import ERROR_TYPE_PREFIX
from okra_sidecar.instances import FINISHED_STATUSES, InstanceStatus
from okra_sidecar.store.base import TurnCommit, TurnSnapshot

MAX_DURATION_POLICY = "policy.workflow.maxDurationMinutes"
# The sidecar's own limit (WorkflowHostAPIConfig.maxInstanceDuration) uses the same deadline.
MAX_INSTANCE_DURATION = "maxInstanceDuration"
STEP_TIMEOUT_POLICY = "policy.workflow.defaultTimeoutMs"
DEFAULT_TIMEOUT = "defaultTimeout"  # the sidecar's own step timeout, when no policy sets one
STEP_TIMEOUTS = (STEP_TIMEOUT_POLICY, DEFAULT_TIMEOUT)
TIMEOUT_ERROR_TYPE = ERROR_TYPE_PREFIX + "timeout"
EXCEEDED_EVENT = "workflow.timeoutExceeded"


@dataclass(frozen=True)
class Expiry:
    """A policy timeout that has passed."""

    policy: str
    limit_ms: int
    action: str

    def describe(self) -> str:
        if self.policy not in STEP_TIMEOUTS:
            length = (
                f"{self.limit_ms / 60_000:g} minutes"
                if self.limit_ms % 60_000 == 0
                else f"{self.limit_ms / 1000:g} s"
            )
            return f"the instance ran longer than {length} ({self.policy})"
        return f"a step took longer than {self.limit_ms} ms ({self.policy})"


def _step_has_own_timeout(definition: Any, step: str) -> bool:
    nodes = getattr(getattr(definition, "plan", None), "nodes", None) or {}
    node = nodes.get(step)
    return getattr(node, "timeout", None) is not None


def step_deadline(snapshot: TurnSnapshot, definition: Any) -> int | None:
    """When the step the instance waits in times out, if defaultTimeoutMs applies to it."""
    if (
        snapshot.step_timeout_ms is None
        or snapshot.status is not InstanceStatus.WAITING
        or not snapshot.current_step
        or not snapshot.step_started_ms
        or _step_has_own_timeout(definition, snapshot.current_step)
    ):
        return None
    return snapshot.step_started_ms + snapshot.step_timeout_ms


def expired(snapshot: TurnSnapshot, definition: Any, now_ms: int) -> Expiry | None:
    """The policy timeout that has passed at `now_ms`, the instance deadline first."""
    action = snapshot.timeout_action or "fail"
    if snapshot.deadline_ms is not None and now_ms >= snapshot.deadline_ms:
        state_started = snapshot.state.get("startedAt")
        started = int(state_started) if isinstance(state_started, int) else snapshot.deadline_ms
        source = snapshot.deadline_source or MAX_DURATION_POLICY
        return Expiry(source, snapshot.deadline_ms - started, action)
    deadline = step_deadline(snapshot, definition)
    if deadline is not None and now_ms >= deadline:
        source = snapshot.step_timeout_source or STEP_TIMEOUT_POLICY
        return Expiry(source, snapshot.step_timeout_ms or 0, action)
    return None


def _next_wake(snapshot: TurnSnapshot, expiry: Expiry, definition: Any, now_ms: int) -> int | None:
    """After `continue`: the restarted step clock, and whichever limit is still pending."""
    wakes = []
    if expiry.policy in STEP_TIMEOUTS:
        wakes.append(now_ms + (snapshot.step_timeout_ms or 0))
        if snapshot.deadline_ms is not None:
            wakes.append(snapshot.deadline_ms)
    else:
        step = step_deadline(snapshot, definition)
        if step is not None:
            wakes.append(step)
    return min(wakes) if wakes else None


def timeout_commit(
    snapshot: TurnSnapshot, expiry: Expiry, now_ms: int, definition: Any = None
) -> TurnCommit:
    """What the timed-out turn writes, per `expiry.action`."""
    event = {
        "type": EXCEEDED_EVENT,
        "time": now_ms,
        "policy": expiry.policy,
        "action": expiry.action,
        "step": snapshot.current_step,
    }
    state = snapshot.state
    context = state.get("context", {})
    if expiry.action == "continue":
        return TurnCommit(
            status=snapshot.status,
            state=state,
            current_step=snapshot.current_step,
            context=context,
            output=None,
            error=None,
            consumed=[],
            wake_at_ms=_next_wake(snapshot, expiry, definition, now_ms),
            requeue=False,
            history=[event],
            now_ms=now_ms,
            # The deadline is spent; a step's clock restarts, so it warns again later.
            step_started_ms=now_ms if expiry.policy in STEP_TIMEOUTS else None,
            clear_deadline=expiry.policy not in STEP_TIMEOUTS,
        )
    if expiry.action == "cancel":
        return TurnCommit(
            status=InstanceStatus.CANCELLED,
            state={**state, "status": "cancelled"},
            current_step="",
            context=context,
            output=None,
            error=None,
            consumed=[],
            wake_at_ms=None,
            requeue=False,
            history=[event, {"type": "workflow.cancelled", "time": now_ms}],
            now_ms=now_ms,
            cancel_reason=f"cancelled by policy: {expiry.describe()}",
        )
    error = {
        "type": TIMEOUT_ERROR_TYPE,
        "status": 408,
        "title": (
            "Timed out"
            if expiry.policy in (MAX_INSTANCE_DURATION, DEFAULT_TIMEOUT)
            else "Timed out by policy"
        ),
        "detail": expiry.describe(),
        "instance": snapshot.current_step or "/",
    }
    return TurnCommit(
        status=InstanceStatus.FAILED,
        state={**state, "status": "failed", "error": error},
        current_step="",
        context=context,
        output=None,
        error=error,
        consumed=[],
        wake_at_ms=None,
        requeue=False,
        history=[event, {"type": "workflow.faulted", "time": now_ms, "error": error}],
        now_ms=now_ms,
    )


def arm(
    status: InstanceStatus,
    current_step: str,
    wake_at_ms: int | None,
    now_ms: int,
    snapshot: TurnSnapshot,
    definition: Any,
) -> tuple[int | None, int | None]:
    """Start the step clock on a new step and wake the instance when a policy timeout is due.

    For a turn that leaves the instance `status` in `current_step`, waking at `wake_at_ms`:
    returns the step's start to record (None: unchanged) and when to wake the instance. The
    turn's commit is built with both at once (runner.py), not copied to set them.
    """
    if status in FINISHED_STATUSES:
        return None, wake_at_ms
    recorded: int | None = None
    step_started = snapshot.step_started_ms
    if current_step != snapshot.current_step or not step_started:
        step_started = recorded = now_ms
    wakes = [wake_at_ms] if wake_at_ms is not None else []
    if snapshot.deadline_ms is not None:
        wakes.append(snapshot.deadline_ms)
    if (
        snapshot.step_timeout_ms is not None
        and status is InstanceStatus.WAITING
        and current_step
        and not _step_has_own_timeout(definition, current_step)
    ):
        wakes.append(step_started + snapshot.step_timeout_ms)
    return recorded, min(wakes) if wakes else wake_at_ms


def has_policy_timeouts(snapshot: TurnSnapshot) -> bool:
    return snapshot.deadline_ms is not None or snapshot.step_timeout_ms is not None


__all__ = [
    "EXCEEDED_EVENT",
    "MAX_DURATION_POLICY",
    "DEFAULT_TIMEOUT",
    "MAX_INSTANCE_DURATION",
    "STEP_TIMEOUT_POLICY",
    "TIMEOUT_ERROR_TYPE",
    "Expiry",
    "arm",
    "expired",
    "has_policy_timeouts",
    "step_deadline",
    "timeout_commit",
]
