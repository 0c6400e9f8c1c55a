"""Which policy keys decide each WorkflowOperatorAPI rpc (the evaluator applies them)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from okra_sidecar.policy import document as keys
from okra_sidecar.policy.audit import Call
from okra_sidecar.policy.document import PolicySet
from okra_sidecar.policy.model import CallGrant

__all__ = [
    "OPERATOR_METHODS",
    "check_operator",
    "checks",
    "instance_conditions",
    "operator_conditions",
]

Check = Callable[[Call, PolicySet, CallGrant], Awaitable[CallGrant]]

# The operator rpcs by the verb whose `<verb>.allowed` and `<verb>.condition` decide them.
OPERATOR_METHODS = {
    **{method: method.lower() for method in ("Suspend", "Resume", "Retry", "Reset", "Delete")},
    **dict.fromkeys(
        ("StartBulkOperation", "GetBulkOperation", "CancelBulkOperation", "ListBulkOperations"),
        "bulk",
    ),
}


def operator_conditions(method: str) -> tuple[str, ...]:
    """The conditions an operator rpc must pass, in order: its verb's own, then the one for
    every operator rpc, then the general one; () for any other rpc."""
    verb = OPERATOR_METHODS.get(method)
    if verb is None:
        return ()
    return (keys.OPERATOR_CONDITIONS[verb], keys.OPERATOR_CONDITION, keys.CONDITION)


def instance_conditions(policies: PolicySet, names: tuple[str, ...]) -> tuple[str, ...]:
    """Those of `names` whose condition reads `instance`: a bulk rpc has no single instance,
    so the bulk runner decides them on each instance it acts on (policy/bulk_items.py)."""
    return tuple(
        key
        for key in names
        if (program := policies.condition(key)) is not None and "instance" in program.roots
    )


async def check_operator(
    call: Call,
    policies: PolicySet,
    grant: CallGrant,
    *,
    switch: Callable[..., Awaitable[None]],
    conditions: Callable[[Call, PolicySet, tuple[str, ...]], Awaitable[Any]],
) -> CallGrant:
    """Decide an operator rpc with the evaluator's `switch` and `conditions` steps; what the
    servicer must then enforce (the status decided on, a bulk operation's size limit)."""
    verb = OPERATOR_METHODS[call.method]
    on, what = policies.operator_allowed.get(verb, True), f"{call.method} of instances"
    await switch(call, policies, keys.OPERATOR_ALLOWED[verb], on=on, what=what)
    names = operator_conditions(call.method)
    if verb == "bulk" and call.instance is None:
        deferred = instance_conditions(policies, names)
        names = tuple(key for key in names if key not in deferred)
    await conditions(call, policies, names)
    if verb == "bulk":
        return CallGrant(identity=call.identity, bulk_max_instances=policies.bulk_max_instances)
    if call.instance is None:
        return grant
    # Applied only while the instance still has the status the policies decided on.
    return CallGrant(identity=grant.identity, expected_status=call.instance.status)


def checks(
    switch: Callable[..., Awaitable[None]],
    conditions: Callable[[Call, PolicySet, tuple[str, ...]], Awaitable[Any]],
) -> dict[str, Check]:
    """The evaluator's check for each operator rpc, made of its `switch` and `conditions`."""
    check: Check = partial(check_operator, switch=switch, conditions=conditions)
    return dict.fromkeys(OPERATOR_METHODS, check)
