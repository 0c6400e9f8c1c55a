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
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["awaited_effects", "threads", "wake_at"]


def threads(
    stack: list[dict[str, Any]], slot: dict[str, Any] | None
) -> Iterator[tuple[list[dict[str, Any]], dict[str, Any] | None]]:
    """Every running thread, depth first: the given one, then its forks' branches."""
    yield stack, slot
    for frame in stack:
        branches = frame.get("branches")
        if branches is None:
            continue
        for branch in branches:
            if not branch.get("done"):
                yield from threads(branch["stack"], branch["task"])


def awaited_effects(stack: list[dict[str, Any]], slot: dict[str, Any] | None) -> set[str]:
    """The ids of the effects whose result some task still waits for."""
    return {
        waiting["effect"]
        for _, waiting in threads(stack, slot)
        if waiting is not None and "effect" in waiting
    }


def wake_at(
    stack: list[dict[str, Any]], slot: dict[str, Any] | None, deadline: int | None
) -> int | None:
    """The earliest time a waiting instance needs a turn: a wait, a backoff or a timeout."""
    wakes: list[int] = [] if deadline is None else [deadline]
    for frames, waiting in threads(stack, slot):
        if waiting is not None:
            wakes.extend(w for w in (waiting.get("due"), waiting.get("deadline")) if w is not None)
        for frame in frames:
            for key in ("deadline", "attemptDeadline"):
                when = frame.get(key)
                if when is not None:
                    wakes.append(when)
    return min(wakes, default=None)
