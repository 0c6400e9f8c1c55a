"""The positions of a running instance: one thread of tasks, plus one per branch of each fork.

A thread is a stack of frames (the task lists being run, innermost last) and a slot (the task
it waits in, or None). The root thread lives in the state's `stack` and `task`; a `fork` frame
holds its branches' threads under `branches`. These helpers walk that tree, read-only.

Frames are JSON objects: `list` (a TaskList reference) and `index` (the next task), plus, for
the frame of a composite task, `task` (its reference), `rawInput`, `input`, `startedAt` and
`deadline` (its timeout, if any). `kind` tells the composites with more to them: `for` (`items`,
`at`), `try` (`retries`, `attemptDeadline`, `attemptAt`), `catch`, `foreach` (`listen`, the
listen's saved slot) and `fork` (`branches`: `{stack, data, task}` while running,
`{done: true, output}` once finished; a fork frame has no `list`). `vars` holds the variables
in scope (for.each, catch.as...), merged with those of the enclosing frames.

Slots are JSON objects: `ref`, `rawInput`, `input`, `startedAt`, `deadline`, plus `due` (wait,
retry backoff), `effect` (the id of the awaited effect), `retry` (the retry number),
`authorization` (a call's resolved authorization), and the listen progress (`events`,
`matched`, `untilMatched`, `corr`; with foreach also `queue`, `outputs`, `n`, `done`).

`Frame`, `Slot`, `Branch` and `InstanceState` below say the same as types, which mypy checks
the interpreter against; at run time they are plain dicts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NotRequired, TypedDict

__all__ = ["Branch", "Frame", "InstanceState", "Slot", "awaited_effects", "threads", "wake_at"]


class Slot(TypedDict, total=False):
    """The task a thread waits in (see the module docstring)."""

    ref: str
    rawInput: Any
    input: Any
    startedAt: int
    deadline: int | None
    due: int
    effect: str
    retry: int
    authorization: Any
    # A listen's progress (listening.ListenProgress) and, with foreach, its queue.
    events: list[Any]
    matched: list[int]
    untilMatched: list[int]
    corr: dict[str, Any]
    queue: list[Any]
    outputs: list[Any]
    n: int
    done: bool


class Branch(TypedDict, total=False):
    """A fork's branch: its own thread while it runs, its output once done."""

    stack: list[Frame]
    data: Any
    task: Slot | None
    done: bool
    output: Any


class Frame(TypedDict, total=False):
    """One task list being run, or a composite task's frame (see the module docstring)."""

    list: str | None  # a TaskList reference; a fork frame has none
    index: int
    task: str
    rawInput: Any
    input: Any
    startedAt: int
    deadline: int | None
    kind: str
    items: list[Any]
    at: int
    retries: int
    attemptDeadline: int | None
    attemptAt: int
    listen: Slot
    branches: list[Branch]
    vars: dict[str, Any]


class InstanceState(TypedDict):
    """An instance's saved state (start_state() builds it, each advance() returns the next)."""

    v: int
    id: str
    workflow: str
    status: str
    startedAt: int
    input: Any
    context: Any
    data: Any
    stack: list[Frame]
    task: Slot | None
    deadline: int | None
    output: Any
    error: Any
    seq: int
    # Where a failed instance's uncaught error was raised (catching.py): what Retry resumes.
    retryFrom: NotRequired[dict[str, Any]]


def threads(stack: list[Frame], slot: Slot | None) -> Iterator[tuple[list[Frame], Slot | None]]:
    """Every running thread, depth first: the given one, then its forks' branches."""
    yield stack, slot
    for frame in stack:
        branches = frame.get("branches")
        if branches is None:
            continue
        for branch in branches:
            if not branch.get("done"):
                yield from threads(branch["stack"], branch["task"])


def awaited_effects(stack: list[Frame], slot: Slot | None) -> set[str]:
    """The ids of the effects whose result some task still waits for."""
    return {
        waiting["effect"]
        for _, waiting in threads(stack, slot)
        if waiting is not None and "effect" in waiting
    }


def wake_at(stack: list[Frame], slot: Slot | None, deadline: int | None) -> int | None:
    """The earliest time a waiting instance needs a turn: a wait, a backoff or a timeout."""
    wakes: list[int] = [] if deadline is None else [deadline]
    for frames, waiting in threads(stack, slot):
        if waiting is not None:
            wakes.extend(w for w in (waiting.get("due"), waiting.get("deadline")) if w is not None)
        for frame in frames:
            wakes.extend(
                w for w in (frame.get("deadline"), frame.get("attemptDeadline")) if w is not None
            )
    return min(wakes, default=None)
