"""What a command is to the Cluster client: the key that places it on a node, whether it
blocks on streams, and whether it may be sent twice when its connection failed.

A call is resent after a lost connection only when a second run cannot do harm: reads, and
the scripts in `RETRY_SAFE_SCRIPTS`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from okra_sidecar.store.multiplexed import Arg
from okra_sidecar.store.scripts import load_script

__all__ = [
    "KEYLESS_COMMANDS",
    "READ_COMMANDS",
    "RETRY_SAFE_SCRIPTS",
    "blocking_read_streams",
    "command_key",
    "encode",
    "retry_safe",
    "upper",
    "without_values",
]

# Scripts a second run leaves as the first left it, whatever its reply: by a dedup id
# (signal, deliver, complete_task), by revision (commit: a repeat finds the revision moved
# and the turn runs again), or by what is already gone (timers, purge, enqueue_task,
# heartbeat). Not create (a repeat would answer "exists" to the caller that made it; the
# caller retries with its request id instead), cancel (a repeat answers "already
# cancelled"), gcra (a repeat counts the call twice) or the schedule and policy writes.
RETRY_SAFE_SCRIPTS = frozenset(
    {"signal", "deliver", "complete_task", "commit", "timers", "purge", "enqueue_task", "heartbeat"}
)
# Commands that change nothing, so a lost reply can be asked again.
READ_COMMANDS = frozenset(
    {"GET", "MGET", "HGET", "HMGET", "HGETALL", "EXISTS", "XRANGE", "XREVRANGE", "XLEN"}
    | {"ZRANGE", "ZCARD", "ZSCORE", "SISMEMBER", "SMEMBERS", "SCARD", "TYPE", "PING"}
    | {"WAIT", "CLUSTER", "INFO", "SCRIPT"}
)
# Commands that name no key: any master answers them (WAIT: see `pipeline`).
KEYLESS_COMMANDS = frozenset(
    {"PING", "WAIT", "WAITAOF", "CLUSTER", "INFO", "SCRIPT", "ASKING", "TIME", "DBSIZE", "ECHO"}
)
_SCRIPT_SHAS = frozenset(
    hashlib.sha1(load_script(name).encode()).hexdigest().encode() for name in RETRY_SAFE_SCRIPTS
)


def upper(value: Arg) -> str:
    if isinstance(value, bytes | memoryview):
        return bytes(value).decode(errors="replace").upper()
    return str(value).upper()


def encode(value: Arg) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes | memoryview):
        return bytes(value)
    return str(value).encode()


def command_key(args: Sequence[Arg]) -> bytes | None:
    """The key that places a command on a node, or None for a command without keys.

    A command with several keys must keep them in one slot (Redis answers CROSSSLOT
    otherwise), so the first one decides.
    """
    name = upper(args[0])
    if name in ("EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO", "FCALL"):
        return encode(args[3]) if int(encode(args[2])) > 0 else None
    if name in ("XREADGROUP", "XREAD"):
        for index, arg in enumerate(args):
            if upper(arg) == "STREAMS":
                return encode(args[index + 1])
        return None
    if name in KEYLESS_COMMANDS:
        return None
    if name in ("XGROUP", "XINFO", "OBJECT", "MEMORY"):  # A subcommand, then the key.
        return encode(args[2]) if len(args) > 2 else None
    return encode(args[1]) if len(args) > 1 else None


def blocking_read_streams(args: Sequence[Arg]) -> tuple[int, Sequence[Arg]] | None:
    """For XREADGROUP or XREAD with BLOCK: where STREAMS stands, and the stream names."""
    if upper(args[0]) not in ("XREADGROUP", "XREAD"):
        return None
    words = [upper(arg) if isinstance(arg, str | bytes) else "" for arg in args]
    if "BLOCK" not in words or "STREAMS" not in words:
        return None
    at = words.index("STREAMS")
    count = (len(args) - at - 1) // 2
    return at, args[at + 1 : at + 1 + count]


def retry_safe(args: Sequence[Arg]) -> bool:
    name = upper(args[0])
    if name == "EVALSHA":
        return encode(args[1]) in _SCRIPT_SHAS
    return name in READ_COMMANDS


def without_values(command: Sequence[Arg], names: Sequence[str]) -> tuple[Arg, ...]:
    """`command` with the value after each option in `names` blanked out."""
    words = [upper(arg) if isinstance(arg, str | bytes) else "" for arg in command]
    return tuple(
        "" if index > 0 and words[index - 1] in names else arg for index, arg in enumerate(command)
    )
