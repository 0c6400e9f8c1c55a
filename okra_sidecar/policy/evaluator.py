"""PolicyEvaluator: the CEL policies and lists applied to one call, with a record of each.

Checks run in a fixed order per rpc: lists and switches first, then input rules, then the
conditions, then the rate limit, so a denied call never spends rate. Every decision is audited
before the call goes on or is refused. A condition that fails to evaluate denies the call and
says which policy failed (fail closed).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial
from typing import Any, NoReturn, Protocol

from celpy.celtypes import MapType, StringType

from okra_sidecar.errors import PolicyDeniedError, Reason, ResourceExhaustedError
from okra_sidecar.policy import document as keys
from okra_sidecar.policy import operator_rules
from okra_sidecar.policy.audit import AuditLog, Call, ServiceIdentity
from okra_sidecar.policy.cel import CelEvaluationError, to_cel
from okra_sidecar.policy.document import PolicySet
from okra_sidecar.policy.globs import GlobList
from okra_sidecar.policy.model import NO_WORKFLOW, CallGrant, WorkflowRef, same_owner
from okra_sidecar.policy.operator_rules import Check
from okra_sidecar.policy.run_verdicts import WORKFLOW_CACHE_SIZE, RunVerdicts, listed

logger = logging.getLogger(__name__)

DEFAULT_QUERY_LIMIT = 100
SCHEDULE_METHODS = (
    "TriggerWorkflow",
    "ListSchedules",
    "GetSchedule",
    "PauseSchedule",
    "ResumeSchedule",
    "DeleteSchedule",
)
TASK_METHODS = ("PollTasks", "CompleteTask", "FailTask", "Heartbeat")
# Rpcs decided as other rpcs are: SignalWithStart as the Run it may be and the Signal it is.
DECIDED_AS = {"SignalWithStart": ("Run", "Signal")}
# The conditions of their own that Signal and Cancel are decided on, beside the general one.
INSTANCE_CONDITIONS = {"Signal": keys.SIGNAL_CONDITION, "Cancel": keys.CANCEL_CONDITION}
# A Run's verdict from the lists (policy key and message, or None) and its limits.
ALL_ROOTS = frozenset({"request", "workflow", "instance"})
METHOD, AUTH, CLAIMS, PEER, METADATA = (
    StringType(k) for k in ("method", "auth", "claims", "peer", "metadata")
)


class PolicyHolder(Protocol):
    """Holds the policy set in force; PolicyManager swaps it at run time."""

    @property
    def current(self) -> PolicySet: ...


class RateLimiter(Protocol):
    """Shared rate limits; None when the call may go ahead, else seconds until it may."""

    async def acquire_rate(
        self, name: str, *, interval_ms: float, period_ms: int
    ) -> float | None: ...


def _has_field(data: Any, path: str) -> bool:
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data or data[part] is None:
            return False
        data = data[part]
    return True


class PolicyEvaluator:
    """Decides each call by the policy set in force when the call started."""

    def __init__(
        self,
        *,
        policies: PolicyHolder,
        limiter: RateLimiter,
        audit: AuditLog,
        service: ServiceIdentity,
        env: Mapping[str, str],
    ) -> None:
        self._policies = policies
        self._limiter = limiter
        self._audit = audit
        self._service = service
        # These never change while the sidecar runs: convert them to CEL values once.
        self._static = {
            "service": to_cel({"name": service.name, "namespace": service.namespace}),
            "env": to_cel(dict(env)),
        }
        self._env_set = frozenset(env)
        self._service_plain = {"name": service.name, "namespace": service.namespace}
        self._env_plain = dict(env)
        self._workflows: dict[WorkflowRef, Any] = {}
        self._run_verdicts = RunVerdicts(service.namespace)
        # Each rpc's check, by method name; built once, not per call.
        self._checks: dict[str, Check] = {
            "Run": self._check_run,
            "Signal": self._check_signal,
            "Cancel": self._check_cancel,
            "Query": self._check_query,
            "Count": self._check_query,
            "GetStatus": self._check_read,
            "AwaitInstance": self._check_read,
            "WatchInstance": self._check_read,
            "ListWorkflows": self._check_listing,
            "Emit": self._check_emit,
            "GetHistory": self._check_history,
            **dict.fromkeys(SCHEDULE_METHODS, self._check_schedule),
            **dict.fromkeys(TASK_METHODS, self._check_task),
            **operator_rules.checks(self._check_switch, self._check_conditions),
        }

    def decides(self, method: str) -> bool:
        """Whether an rpc (by its name) has a check here; one without is refused."""
        return method in self._checks or method in DECIDED_AS

    @property
    def policies(self) -> PolicySet:
        return self._policies.current

    def needs_instance(self, method: str, policies: PolicySet) -> bool:
        """Whether a Signal, Cancel or operator decision reads the instance (load it first)."""
        if not policies.conditions:
            return False  # no policy set, or one without conditions: the usual case
        own = INSTANCE_CONDITIONS.get(method)
        programs = (own, keys.CONDITION) if own else operator_rules.operator_conditions(method)
        return any(policies.condition(k) for k in programs if k)

    # -- per rpc -------------------------------------------------------------------------------

    async def record(
        self, call: Call, policies: PolicySet, *, allowed: bool, policy: str = "", message: str = ""
    ) -> None:
        """An audit record for a decision taken after `authorize(..., record=False)`."""
        await self._audit.decision(
            policies.audit_level, call, allowed=allowed, policy=policy, message=message
        )

    async def authorize(self, call: Call, policies: PolicySet, *, record: bool = True) -> CallGrant:
        """Allow the call (returning what the servicer must enforce) or raise a denial.

        Raises:
            PolicyDeniedError: a policy refused the call; `policy` names it.
            ResourceExhaustedError: a rate limit is reached; `retry_after_s` says when to retry.
        """
        check = self._checks.get(call.method)
        grant = CallGrant(identity=call.identity)
        if check is not None:
            grant = await check(call, policies, grant)
        if record and policies.audit_level != "none":
            await self._audit.decision(policies.audit_level, call, allowed=True)
        return grant

    async def _check_run(self, call: Call, policies: PolicySet, grant: CallGrant) -> CallGrant:
        workflow = call.workflow or NO_WORKFLOW
        problem, limits = self._run_verdicts.verdict(policies, workflow)
        if problem is not None:
            await self._deny(call, policies, *problem)
        limit = policies.run_max_input_bytes
        if limit is not None and call.input_bytes > limit:
            await self._deny(
                call,
                policies,
                keys.RUN_MAX_INPUT_SIZE_KB,
                f"the input is {call.input_bytes} bytes and {keys.RUN_MAX_INPUT_SIZE_KB} allows "
                f"{limit} bytes ({limit / 1024:g} KiB); send a smaller input or raise the limit",
            )
        for patterns, fields in policies.run_required_input_fields:
            if patterns.match(workflow.names()):
                missing = [f for f in fields if not _has_field(call.input, f)]
                if missing:
                    await self._deny(
                        call,
                        policies,
                        keys.RUN_REQUIRED_INPUT_FIELDS,
                        f"the input lacks {', '.join(missing)}, which "
                        f"{keys.RUN_REQUIRED_INPUT_FIELDS} requires for {patterns.patterns[0]}; "
                        "add them to the input",
                    )
        # Guarded here, on the hot rpcs: no coroutine when no condition or rate applies.
        if policies.conditions:
            await self._check_conditions(call, policies, (keys.RUN_CONDITION, keys.CONDITION))
        if "run" in policies.rates:
            await self._check_rate(call, policies, "run")
        # The servicer takes the tighter of `limits` and the sidecar's own
        # maxConcurrentInstances.
        return CallGrant(identity=call.identity, run_limits=limits, instance_id=call.instance_id)

    async def _check_signal(self, call: Call, policies: PolicySet, grant: CallGrant) -> CallGrant:
        if not policies.signal_allowed:
            await self._deny(
                call,
                policies,
                keys.SIGNAL_ALLOWED,
                f"signals are turned off ({keys.SIGNAL_ALLOWED} is false); set it to true",
            )
        allowed = policies.signal_allowed_signals
        if allowed and allowed.match([call.signal]) is None:
            await self._deny(
                call,
                policies,
                keys.SIGNAL_ALLOWED_SIGNALS,
                f"signal {call.signal!r} is not in {keys.SIGNAL_ALLOWED_SIGNALS} "
                f"({listed(allowed.patterns)}); send one of those or add it to the list",
            )
        if policies.conditions:
            await self._check_conditions(call, policies, (keys.SIGNAL_CONDITION, keys.CONDITION))
        if "signal" in policies.rates:
            await self._check_rate(call, policies, "signal")
        return self._with_expectation(call, grant)

    async def _check_cancel(self, call: Call, policies: PolicySet, grant: CallGrant) -> CallGrant:
        if not policies.cancel_allowed:
            await self._deny(
                call,
                policies,
                keys.CANCEL_ALLOWED,
                f"cancelling is turned off ({keys.CANCEL_ALLOWED} is false); set it to true",
            )
        if policies.cancel_require_reason and not call.reason.strip():
            await self._deny(
                call,
                policies,
                keys.CANCEL_REQUIRE_REASON,
                f"{keys.CANCEL_REQUIRE_REASON} is true: say why in the request's `reason`",
            )
        await self._check_conditions(call, policies, (keys.CANCEL_CONDITION, keys.CONDITION))
        return self._with_expectation(call, grant)

    @staticmethod
    def _with_expectation(call: Call, grant: CallGrant) -> CallGrant:
        if call.instance is None:
            return grant
        return CallGrant(identity=grant.identity, expected_status=call.instance.status)

    async def _check_query(self, call: Call, policies: PolicySet, grant: CallGrant) -> CallGrant:
        statuses: tuple[str, ...] | None = None
        allowed = policies.query_allowed_statuses
        if allowed:
            outside = [s for s in call.query_statuses if s not in allowed]
            if outside:
                await self._deny(
                    call,
                    policies,
                    keys.QUERY_ALLOWED_STATUSES,
                    f"status {', '.join(outside)} may not be queried; "
                    f"{keys.QUERY_ALLOWED_STATUSES} allows {', '.join(allowed)}",
                )
            # No status filter means "every status this caller may see".
            statuses = call.query_statuses or allowed
        limit: int | None = None
        maximum = policies.query_max_results
        if maximum is not None:
            if call.query_limit > maximum:
                await self._deny(
                    call,
                    policies,
                    keys.QUERY_MAX_RESULTS,
                    f"limit {call.query_limit} is above {keys.QUERY_MAX_RESULTS} ({maximum}); "
                    f"ask for at most {maximum} per page and follow the cursor",
                )
            if call.query_limit == 0:
                limit = min(DEFAULT_QUERY_LIMIT, maximum)
        await self._check_conditions(call, policies, (keys.QUERY_CONDITION, keys.CONDITION))
        await self._check_rate(call, policies, "query")
        return CallGrant(identity=call.identity, query_statuses=statuses, query_limit=limit)

    @staticmethod
    def decides_reads(policies: PolicySet) -> bool:
        """Whether a GetStatus decision can do anything: refuse (a general condition) or
        leave an audit record. Without either, the interceptor need not describe the call."""
        return policies.condition(keys.CONDITION) is not None or policies.audit_level != "none"

    async def _check_read(self, call: Call, policies: PolicySet, grant: CallGrant) -> CallGrant:
        # GetStatus reads one instance whose id the caller holds: only the general condition
        # applies, not the query group (a service may poll the runs it started).
        await self._check_conditions(call, policies, (keys.CONDITION,))
        return grant

    async def _check_listing(self, call: Call, policies: PolicySet, grant: CallGrant) -> CallGrant:
        # ListWorkflows hides what the caller may not run instead (see `may_run`).
        return grant

    async def _check_switch(
        self, call: Call, policies: PolicySet, key: str, *, on: bool, what: str
    ) -> None:
        if not on:
            await self._deny(
                call, policies, key, f"{what} is turned off ({key} is false); set it to true"
            )

    async def _checklisted(
        self, call: Call, policies: PolicySet, key: str, allowed: GlobList, *, name: str, noun: str
    ) -> None:
        if allowed and allowed.match([name]) is None:
            await self._deny(
                call,
                policies,
                key,
                f"{noun} {name!r} is not in {key} ({listed(allowed.patterns)}); use one of "
                "those or add it to the list",
            )

    async def _check_emit(self, call: Call, policies: PolicySet, grant: CallGrant) -> CallGrant:
        await self._check_switch(
            call, policies, keys.EMIT_ALLOWED, on=policies.emit_allowed, what="emitting events"
        )
        event_type = str(call.resource[1].get("type", "")) if call.resource else ""
        await self._checklisted(
            call,
            policies,
            keys.EMIT_ALLOWED_TYPES,
            policies.emit_allowed_types,
            name=event_type,
            noun="event type",
        )
        await self._check_conditions(call, policies, (keys.EMIT_CONDITION,))
        return grant

    async def _check_history(self, call: Call, policies: PolicySet, grant: CallGrant) -> CallGrant:
        await self._check_switch(
            call, policies, keys.HISTORY_ALLOWED, on=policies.history_allowed, what="history"
        )
        # History shows what GetStatus shows and more: the general condition applies too.
        await self._check_conditions(call, policies, (keys.HISTORY_CONDITION, keys.CONDITION))
        return grant

    async def _check_schedule(self, call: Call, policies: PolicySet, grant: CallGrant) -> CallGrant:
        await self._check_switch(
            call,
            policies,
            keys.SCHEDULE_ALLOWED,
            on=policies.schedule_allowed,
            what="the schedule api",
        )
        schedule = call.resource[1] if call.resource else {}
        if policies.schedule_owner_only and "owner" in schedule:
            if not same_owner(schedule["owner"], call.identity.claims):
                await self._deny(
                    call,
                    policies,
                    keys.SCHEDULE_OWNER_ONLY,
                    f"{keys.SCHEDULE_OWNER_ONLY} is true and schedule {schedule.get('id')} was "
                    f"created by another caller than {call.identity.describe()}; only its "
                    "creator may read or change it",
                )
        programs: tuple[str, ...] = (keys.SCHEDULE_CONDITION,)
        if call.workflow is not None:
            programs += (keys.CONDITION,)
        await self._check_conditions(call, policies, programs)
        return grant

    async def _check_task(self, call: Call, policies: PolicySet, grant: CallGrant) -> CallGrant:
        await self._check_switch(
            call, policies, keys.TASK_ALLOWED, on=policies.task_allowed, what="worker tasks"
        )
        queue = str(call.resource[1].get("queue", "")) if call.resource else ""
        await self._checklisted(
            call,
            policies,
            keys.TASK_ALLOWED_QUEUES,
            policies.task_allowed_queues,
            name=queue,
            noun="task queue",
        )
        await self._check_conditions(call, policies, (keys.TASK_CONDITION,))
        return grant

    @staticmethod
    def filters_schedules(policies: PolicySet) -> bool:
        """Whether ListSchedules must check each schedule it lists (`may_see`)."""
        return policies.schedule_owner_only or any(
            policies.condition(key) is not None for key in (keys.SCHEDULE_CONDITION, keys.CONDITION)
        )

    def may_see(self, call: Call, policies: PolicySet) -> bool:
        """Whether a listed schedule is shown: its owner and conditions, without a record."""
        schedule = call.resource[1] if call.resource else {}
        if policies.schedule_owner_only and not same_owner(
            schedule.get("owner") or {}, call.identity.claims
        ):
            return False
        for key in (keys.SCHEDULE_CONDITION, keys.CONDITION):
            program = policies.condition(key)
            if program is None:
                continue
            try:
                if not program.decide(
                    self._plain(call), partial(self._activation, call, program.roots)
                ):
                    return False
            except CelEvaluationError:
                return False
        return True

    def may_run(self, call: Call, policies: PolicySet, workflow: WorkflowRef) -> bool:
        """Whether ListWorkflows shows `workflow` to this caller (a failing condition hides it)."""
        if self._run_verdicts.verdict(policies, workflow)[0] is not None:
            return False
        probe = Call(
            method="Run", identity=call.identity, metadata=call.metadata, workflow=workflow
        )
        for key in (keys.RUN_CONDITION, keys.CONDITION):
            program = policies.condition(key)
            if program is None:
                continue
            try:
                if not program.decide(
                    self._plain(probe), partial(self._activation, probe, program.roots)
                ):
                    return False
            except CelEvaluationError:
                return False
        return True

    def _plain(self, call: Call) -> dict[str, Any]:
        """The activation as plain data: what a condition's remembered outcomes are keyed by."""
        values: dict[str, Any] = {
            "request": {
                "method": call.method,
                "auth": {"claims": call.identity.claims, "peer": call.identity.peer},
                "metadata": call.metadata,
            },
            "workflow": (call.workflow or NO_WORKFLOW).to_activation(),
            "service": self._service_plain,
            "env": self._env_plain,
        }
        if call.instance is not None:
            values["instance"] = call.instance.to_activation()
        if call.resource is not None:
            values[call.resource[0]] = dict(call.resource[1])
        return values

    # -- shared steps --------------------------------------------------------------------------

    def _activation(self, call: Call, roots: frozenset[str] = ALL_ROOTS) -> dict[str, Any]:
        """The CEL activation, with only the `roots` the conditions read, converted once."""
        activation: dict[str, Any] = dict(self._static)
        if "request" in roots:
            activation["request"] = MapType(
                {
                    METHOD: StringType(call.method),
                    AUTH: MapType(
                        {CLAIMS: call.identity.cel_claims, PEER: StringType(call.identity.peer)}
                    ),
                    METADATA: to_cel(dict(call.metadata)),
                }
            )
        if "workflow" in roots:
            activation["workflow"] = self._workflow_activation(call.workflow or NO_WORKFLOW)
        if call.instance is not None and "instance" in roots:
            activation["instance"] = to_cel(call.instance.to_activation())
        if call.resource is not None and call.resource[0] in roots:
            activation[call.resource[0]] = to_cel(dict(call.resource[1]))
        return activation

    def _workflow_activation(self, workflow: WorkflowRef) -> Any:
        cached = self._workflows.get(workflow)
        if cached is None:
            if len(self._workflows) >= WORKFLOW_CACHE_SIZE:
                self._workflows.clear()
            cached = self._workflows[workflow] = to_cel(workflow.to_activation())
        return cached

    async def _check_conditions(
        self, call: Call, policies: PolicySet, condition_keys: tuple[str, ...]
    ) -> None:
        programs = [(k, p) for k in condition_keys if (p := policies.condition(k)) is not None]
        if not programs:
            return
        roots = frozenset().union(*(p.roots for _, p in programs))
        built: list[dict[str, Any]] = []

        def activation() -> dict[str, Any]:
            # Built only when an outcome is not remembered yet, and then once per call.
            if not built:
                built.append(self._activation(call, roots))
            return built[0]

        values = self._plain(call)
        for key, program in programs:
            try:
                allowed = program.decide(values, activation)
            except CelEvaluationError as exc:
                unset = sorted(program.env_names - self._env_set)
                if unset:
                    exc = CelEvaluationError(
                        f"{exc}; env.{unset[0]} is not set on this sidecar, set it in its "
                        "environment"
                    )
                logger.warning("%s failed to evaluate for %s: %s", key, call.method, exc)
                await self._deny(
                    call,
                    policies,
                    key,
                    f"{key} could not be evaluated ({exc}), and a policy that cannot be "
                    "evaluated denies; fix the condition or send what it reads",
                )
            if not allowed:
                await self._deny(
                    call,
                    policies,
                    key,
                    f"{key} `{program.source}` is false for this call by "
                    f"{call.identity.describe()}; change the condition or call with what it "
                    "requires",
                )

    async def _check_rate(self, call: Call, policies: PolicySet, verb: str) -> None:
        rate = policies.rates.get(verb)
        if rate is None:
            return
        wait_s = await self._limiter.acquire_rate(
            f"{self._service.name}:{verb}", interval_ms=rate.interval_ms, period_ms=rate.period_ms
        )
        if wait_s is None:
            return
        key = keys.RATE_KEYS[verb]
        message = (
            f"{call.method} is rate limited by {key} ({rate.text}, shared by every sidecar of "
            f"service {self._service.name or '(unnamed)'}); retry in {wait_s:.2f}s"
        )
        await self._audit.decision(
            policies.audit_level, call, allowed=False, policy=key, message=message
        )
        raise ResourceExhaustedError(
            message, reason=Reason.RATE_LIMITED, policy=key, retry_after_s=wait_s
        )

    async def _deny(self, call: Call, policies: PolicySet, key: str, reason: str) -> NoReturn:
        target = f" of {call.target}" if call.target else ""
        message = f"{call.method}{target} denied: {reason}"
        await self._audit.decision(
            policies.audit_level, call, allowed=False, policy=key, message=message
        )
        raise PolicyDeniedError(message, policy=key)


__all__ = [
    "SCHEDULE_METHODS",
    "TASK_METHODS",
    "PolicyEvaluator",
    "PolicyHolder",
    "RateLimiter",
]
