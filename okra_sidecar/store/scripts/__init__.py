"""Lua scripts run atomically inside Redis; see each file's header for KEYS and ARGV."""

from __future__ import annotations

from importlib import resources

from okra_sidecar.instances import FINISHED_STATUSES, InstanceStatus

# Scripts that touch status indexes receive them as KEYS in InstanceStatus order from this slot.
STATUS_SLOTS = {"commit": 7, "cancel": 5, "suspend": 4, "resume": 4, "retry": 4, "reset": 4}
# Scripts that hand events to instances get the helpers of lib.lua (deliver, resubscribe, ...).
LIBRARY_USERS = frozenset(
    {
        "commit",
        "cancel",
        "deliver",
        "complete_task",
        "suspend",
        "resume",
        "retry",
        "reset",
        "refuse_event",
    }
)
# Scripts made of others: each part becomes a local function of its name taking KEYS and ARGV,
# so the parts keep their own layouts and stay the single copy of what they do.
COMPOSITES = {"signal_start": ("create", "signal"), "reserve_create": ("reserve", "create")}


def _preamble(first_slot: int) -> str:
    slots = ", ".join(f"{s.value} = {first_slot + i}" for i, s in enumerate(InstanceStatus))
    finished = ", ".join(f"{s.value} = true" for s in sorted(FINISHED_STATUSES))
    # The finished-time index follows the status indexes in the scripts that finish instances.
    finished_index = first_slot + len(InstanceStatus)
    return (
        f"local STATUS_SLOT = {{{slots}}}\nlocal FINISHED = {{{finished}}}\n"
        f"local FINISHED_INDEX = {finished_index}\n"
    )


def load_script(name: str) -> str:
    """The Lua source of `name`, with the status tables (and helpers) it relies on prepended."""
    folder = resources.files(__package__)
    body = folder.joinpath(f"{name}.lua").read_text()
    for part in reversed(COMPOSITES.get(name, ())):
        part_body = folder.joinpath(f"{part}.lua").read_text()
        body = f"local function {part}(KEYS, ARGV)\n{part_body}end\n{body}"
    if name in LIBRARY_USERS:
        body = folder.joinpath("lib.lua").read_text() + body
    return _preamble(STATUS_SLOTS.get(name, 0)) + body
