"""TurnStore: what an engine turn loads and, guarded by the revision, commits."""

from __future__ import annotations

from typing import Any

from okra_sidecar.instances import FINISHED_STATUSES, InstanceStatus
from okra_sidecar.store.base import InboxEntry, TurnCommit, TurnExtras, TurnSnapshot
from okra_sidecar.store.connections import StoreConnections
from okra_sidecar.store.jsontext import dumps, loads
from okra_sidecar.store.keys import ENGINE_GROUP, history_of, inbox_of, reset_points_of
from okra_sidecar.store.multiplexed import MultiplexedScript
from okra_sidecar.store.records import subscription_types
from okra_sidecar.store.replies import json_or, map_redis_errors, pairs, text
from okra_sidecar.store.scripts import load_script

__all__ = ["RESET_POINT_BUDGET", "TurnStore"]

# What one instance's reset points may take in all (bytes of JSON): a point that would pass it
# is recorded as not kept, so Reset says why it cannot go back there.
RESET_POINT_BUDGET = 4 * 1024 * 1024
# What a turn reads of the instance hash (HMGET), in load_turn's order.
_TURN_FIELDS = (
    *("wf", "status", "rev", "state", "ikey", "otel"),
    *("deadline", "steptmo", "tmoact", "step", "stepat"),
    *("parent", "peffect", "subs", "dlsrc", "stsrc", "slow", "lim", "lwf"),
)


class TurnStore(StoreConnections):
    """A turn's snapshot (state, revision, inbox) and its atomic commit."""

    _commit = MultiplexedScript(load_script("commit"))

    async def load_turn(self, instance_id: str) -> TurnSnapshot | None:
        key = self.keys.instance(instance_id)
        with map_redis_errors():
            (wf, status, rev, state, ikey, otel, *more), inbox = await self.hot.pipeline(
                [
                    ("HMGET", key, *_TURN_FIELDS),
                    ("XRANGE", inbox_of(key), "-", "+", "COUNT", 1000),
                ]
            )
        (
            deadline,
            step_timeout,
            action,
            step,
            step_at,
            parent,
            peffect,
            subs,
            source,
            stsrc,
            slow,
            scope,
            workflow_key,
        ) = more
        if wf is None or status is None:
            return None
        return TurnSnapshot(
            instance_id=instance_id,
            workflow_id=text(wf),
            status=InstanceStatus(text(status)),
            revision=text(rev),
            state=json_or(state, {}),
            index_member=text(ikey),
            inbox=[InboxEntry(text(eid), loads(pairs(fields)[b"e"])) for eid, fields in inbox],
            trace_context=text(otel),
            deadline_ms=int(deadline) if deadline else None,
            step_timeout_ms=int(step_timeout) if step_timeout else None,
            timeout_action=text(action),
            deadline_source=text(source),
            step_timeout_source=text(stsrc),
            current_step=text(step),
            step_started_ms=int(step_at or 0),
            parent_id=text(parent),
            parent_effect=text(peffect),
            subscriptions=text(subs),
            slow=slow is not None,
            limit_scope=None if scope is None else text(scope),
            limit_workflow=text(workflow_key),
        )

    async def commit_turn(self, snapshot: TurnSnapshot, commit: TurnCommit) -> bool:
        """Apply a turn atomically; False if the instance changed since it was loaded."""
        keys = self.keys
        iid = snapshot.instance_id
        now = str(commit.now_ms)
        fields = [
            *("status", commit.status.value, "state", dumps(commit.state)),
            *("step", commit.current_step, "ctx", dumps(commit.context), "updated", now),
            # The script applies the turn only at the loaded revision: this is the next one.
            *("rev", str(int(snapshot.revision or 0) + 1)),
        ]
        if commit.status in FINISHED_STATUSES:
            fields += ["completed", now, "output", dumps(commit.output)]
            if commit.error is not None:
                fields += ["error", dumps(commit.error)]
        if commit.cancel_reason:
            fields += ["reason", commit.cancel_reason]
        if commit.step_started_ms is not None:
            fields += ["stepat", str(commit.step_started_ms)]
        if commit.clear_deadline:
            fields += ["deadline", ""]
        partition = keys.partition(iid)
        key = keys.instance_in(partition, iid)
        commit_keys = [key, inbox_of(key), history_of(key), *keys.commit_keys(partition)]
        out: dict[str, Any] = {}
        if commit.extras is not None:
            out = self._commit_extras(snapshot, commit.extras, commit_keys, partition)
        if (
            self.one_node
            and snapshot.limit_scope is not None
            and commit.status in FINISHED_STATUSES
            and not snapshot.status.finished
        ):
            # On a single Redis the limit scope's keys are on this node: the finishing commit
            # gives the admission back itself, rather than through the outbox and the relay.
            scope, workflow_key = snapshot.limit_scope, snapshot.limit_workflow
            out["release"] = {"slot": len(commit_keys) + 1, "scope": scope, "wf": workflow_key}
            commit_keys += [
                keys.limit_active(scope),
                keys.limit_held(scope),
                keys.limit_workflow(scope, workflow_key),
            ]
        extras = dumps(out) if out else ""
        with map_redis_errors():
            applied = await self.hot.evalsha(
                self._commit,
                keys=commit_keys,
                args=[
                    iid,
                    snapshot.revision,
                    len(fields),
                    commit.status.value,
                    dumps(commit.consumed),
                    "" if commit.wake_at_ms is None else str(commit.wake_at_ms),
                    "1" if commit.requeue else "0",
                    len(commit.history),
                    snapshot.index_member,
                    extras,
                    dumps(list(commit.acks)) if commit.acks else "",
                    ENGINE_GROUP,
                    *fields,
                    *(dumps(event) for event in commit.history),
                    *_reset_point_args(commit.extras),
                ],
            )
        return int(applied) == 1

    def _commit_extras(
        self, snapshot: TurnSnapshot, extras: TurnExtras, keys: list[str], partition: int
    ) -> dict[str, Any]:
        """commit.lua's extras (encoded as JSON), appending the keys they need to `keys`
        (`keys[0]`, the instance's key, first)."""

        def slot(key: str) -> int:
            keys.append(key)
            return len(keys)

        out: dict[str, Any] = {}
        if extras.effects:
            out["effects"] = [dumps(effect) for effect in extras.effects]
            out["effectSlot"] = slot(self.keys.effects(partition))
        if extras.events:
            out["events"] = [dumps(event) for event in extras.events]
        if extras.inbox:
            out["inbox"] = [dumps(event) for event in extras.inbox]
        subs = extras.subscriptions
        if subs is not None:
            old = subscription_types(snapshot.subscriptions)
            record = dumps({"types": list(subs.types), "filters": subs.filters})
            if not subs.filters:
                record = ""
            if record != snapshot.subscriptions:
                new = sorted(set(subs.types)) if record else []
                out["subs"] = {
                    "old": [slot(self.keys.subscribers(partition, t)) for t in old if t not in new],
                    "new": [slot(self.keys.subscribers(partition, t)) for t in new if t not in old],
                    "record": record,
                }
        if extras.reset_points:
            # How many: the points follow the history events as plain arguments (commit_turn),
            # not JSON inside this JSON, which would escape every one of them once more.
            out["points"] = len(extras.reset_points)
            out["pointSlot"] = slot(reset_points_of(keys[0]))
            if snapshot.revision == "0":
                # Never committed, so no point kept yet: the script need not look.
                out["pointsFirst"] = True
            out["pointBudget"] = RESET_POINT_BUDGET
        if extras.parent_event is not None and snapshot.parent_id:
            out["parent"] = {
                "id": snapshot.parent_id,
                "dedup": extras.parent_event["id"],
                "event": dumps(extras.parent_event),
            }
        return out


def _reset_point_args(extras: TurnExtras | None) -> list[str]:
    """commit.lua's last arguments: each reset point's task and its JSON."""
    if extras is None or not extras.reset_points:
        return []
    return [text for task, point in extras.reset_points.items() for text in (task, dumps(point))]
