"""ClusterCommands: the hot commands on a Redis Cluster, one pipelined connection per master.

Each command goes to the master that serves the slot of its keys, on that master's
multiplexed connection (store/multiplexed.py). `MOVED` updates the slot map and resends;
`ASK` resends once to the importing node behind `ASKING`. A connection that fails (a master
died) refreshes the whole map from any node that answers, and the call is resent only when
sending it twice cannot do harm: reads, and the scripts in `RETRY_SAFE_SCRIPTS`
(cluster_routing.py). Anything else fails with the ConnectionError, which the store turns
into UNAVAILABLE, and the caller retries with its request id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from redis import exceptions as redis_errors
from redis.crc import key_slot

from okra_sidecar.store.cluster_routing import (
    blocking_read_streams,
    command_key,
    encode,
    retry_safe,
    upper,
    without_values,
)
from okra_sidecar.store.multiplexed import Arg, MultiplexedScript, ScriptLike

__all__ = [
    "ClusterCommands",
    "NodeCommands",
]

logger = logging.getLogger(__name__)

SLOTS = 16384
MAX_REDIRECTS = 5
# A failed node makes every caller ask for a new map; one refresh serves them all.
REFRESH_INTERVAL_S = 0.25
# A blocking read's connection (one per slot and reader) that no call used for this long is
# closed: a PollTasks stream that ended, or a worker id never seen again, keeps none.
READER_IDLE_S = 30.0
# Busy slot reads remembered at most; forgetting one costs it a blocked read once.
MAX_WARM_READS = 4096


class NodeCommands(Protocol):
    """What the cluster client needs of its connection to one node."""

    async def execute(self, *args: Arg) -> Any: ...

    async def replies(self, commands: Sequence[Sequence[Arg]]) -> list[Any]: ...

    async def aclose(self) -> None: ...


Address = tuple[str, int]
# One blocking read of one slot: the slot, and the command as sent there (COUNT and BLOCK
# values left out: see `_read_slots`).
_Read = tuple[int, tuple[Arg, ...]]
NodeFactory = Callable[[str], NodeCommands]


class ClusterCommands:
    """HotCommands on a Redis Cluster: one connection per master, routed by key slot.

    Args:
        seeds: URLs of some nodes (any of them; the rest is learnt from `CLUSTER SLOTS`).
            Their user, password, TLS settings and timeouts apply to every node.
        connect: Makes the connection to one node from its URL.
    """

    def __init__(
        self, seeds: Sequence[str], *, connect: NodeFactory, reader_idle_s: float = READER_IDLE_S
    ) -> None:
        if not seeds:
            raise ValueError("a Redis Cluster needs at least one seed node")
        self._template = urlsplit(seeds[0])
        self._seeds = [_address(url) for url in seeds]
        self._connect = connect
        self._slots: list[Address | None] = [None] * SLOTS
        self._nodes: dict[Address, NodeCommands] = {}
        # Blocking stream reads over several slots: a connection and a read per slot.
        # Keyed by slot and command: callers reading as other consumers read side by side.
        self._readers: dict[_Read, tuple[Address, NodeCommands]] = {}
        self._reads: dict[_Read, asyncio.Task[Any]] = {}
        self._reader_idle_s = reader_idle_s
        self._reader_used: dict[_Read, float] = {}
        self._swept_at = float("-inf")
        # Reads of one slot whose last read found entries: the next call reads them first
        # without blocking (see `_read_slots`).
        self._warm_reads: set[_Read] = set()
        self._refresh_lock = asyncio.Lock()
        self._refreshed_at = float("-inf")
        self._closed = False

    def script(self, text: str | bytes | memoryview) -> MultiplexedScript:
        return MultiplexedScript(text)

    async def execute(self, *args: Arg) -> Any:
        """One command on the master of its key's slot (any master for a keyless one).

        A blocking stream read over several slots becomes one read per slot (see
        `_read_slots`), since one command may only name keys of one slot.
        """
        streams = blocking_read_streams(args)
        if streams is not None and len({key_slot(encode(k)) for k in streams[1]}) > 1:
            return await self._read_slots(args, *streams)
        replies = await self._send([args], command_key(args))
        reply = replies[0]
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def evalsha(
        self, script: ScriptLike, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()
    ) -> Any:
        key = encode(keys[0]) if keys else None
        # Straight to the slot's master (no closure, no SCRIPT check): the common case.
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        reply = (await self._send_to_slot([command], key))[0]
        if isinstance(reply, redis_errors.NoScriptError):
            # A restarted or failed-over master forgot it: SCRIPT LOAD goes to every master
            # (the script's other slots included), then the call runs once more.
            await self._send([("SCRIPT", "LOAD", script.script)], None)
            reply = (await self._send_to_slot([command], key))[0]
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Several commands, each on its slot's master; replies in order (first error raised).

        The commands of one slot go together, in their order (the XADDs of one stream stay
        in order). A keyless command (WAIT) goes with the command before it, to the node
        that ran it: WAIT waits for that node's replicas to take its connection's writes.
        """
        by_slot: dict[int | None, tuple[bytes | None, list[int]]] = {}
        last: int | None = None
        for index, command in enumerate(commands):
            key = command_key(command)
            slot = key_slot(key) if key is not None else last
            by_slot.setdefault(slot, (key, []))[1].append(index)
            last = slot
        groups = list(by_slot.values())
        if len(groups) == 1:
            # One slot (a turn's load, most pipelines): no task to gather.
            results = [await self._send(commands, groups[0][0])]
        else:
            results = await asyncio.gather(
                *(self._send([commands[i] for i in indexes], key) for key, indexes in groups)
            )
        replies: list[Any] = [None] * len(commands)
        for (_, indexes), group_replies in zip(groups, results, strict=True):
            for index, reply in zip(indexes, group_replies, strict=True):
                replies[index] = reply
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies

    async def aclose(self) -> None:
        self._closed = True
        reads, self._reads = self._reads, {}
        for task in reads.values():
            task.cancel()
        nodes, self._nodes = self._nodes, {}
        readers, self._readers = self._readers, {}
        for node in [*nodes.values(), *(reader for _, reader in readers.values())]:
            await node.aclose()
        await asyncio.gather(*reads.values(), return_exceptions=True)

    async def _read_slots(self, args: Sequence[Arg], at: int, streams: Sequence[Arg]) -> Any:
        """A blocking XREADGROUP over streams of several slots: one read per slot.

        The slots whose last read found entries (busy partitions) are read first without
        blocking, the slots of one master in one write on that master's connection
        (`_sweep`): one round trip per master for what all of them hold, rather than a
        blocked read per slot that wakes for each entry. Every other slot gets a blocking
        read on a connection of its own, as do the swept ones when the sweep found nothing,
        and the call then answers as soon as one of them has entries. A slot swept empty
        waits in a blocked read from then on, until it has entries again.

        The reads still blocked keep going; what they take is handed out by the next call
        with the same command, so no entry read into this consumer's pending list is left
        behind while the caller keeps reading (one that stops leaves it to be reclaimed,
        as a blocked read cancelled on a single Redis does).
        """
        ids = args[at + 1 + len(streams) :]
        by_slot: dict[int, list[int]] = {}
        for index, stream in enumerate(streams):
            by_slot.setdefault(key_slot(encode(stream)), []).append(index)
        reads: list[_Read] = []
        commands: dict[_Read, tuple[Arg, ...]] = {}
        for slot, indexes in by_slot.items():
            command = (
                *args[: at + 1],
                *(streams[i] for i in indexes),
                *(ids[i] for i in indexes),
            )
            # A caller's COUNT follows its free capacity: a read still blocked with the
            # last count is the same read, else its entries would wait for a reclaim.
            read = (slot, without_values(command, ("COUNT", "BLOCK")))
            left = self._reads.get(read)
            if left is not None and left.done() and not _has_reply(left):
                # A read of an earlier call that found nothing: read again, afresh.
                del self._reads[read]
            reads.append(read)
            commands[read] = command
        now = asyncio.get_running_loop().time()
        self._reader_used.update(dict.fromkeys(reads, now))
        await self._close_idle_readers(now)
        if not any(r in self._reads and self._reads[r].done() for r in reads):
            warm = [r for r in reads if r in self._warm_reads and r not in self._reads]
            if warm:
                # The quiet slots wait meanwhile, so that none is left unread under load.
                quiet = [r for r in reads if r not in self._reads and r not in warm]
                self._block(commands, quiet)
                swept = await self._sweep(warm, commands)
                if swept:
                    return swept
            self._block(commands, [r for r in reads if r not in self._reads])
        # (Reads that have answered are handed out first, the free slots read next time.)
        waiting = [self._reads[r] for r in reads if r in self._reads]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        entries: list[Any] = []
        failure: BaseException | None = None
        for read in reads:
            task = self._reads.get(read)
            if task is None or not task.done():
                continue
            del self._reads[read]
            if task.cancelled():
                continue
            error = task.exception()
            if error is not None:
                failure = error
            elif task.result():
                entries.extend(_stream_entries(task.result()))
                self._note_warm(read, warm=True)
        if failure is not None and not entries:
            raise failure
        return entries or None

    def _block(self, commands: dict[_Read, tuple[Arg, ...]], reads: Sequence[_Read]) -> None:
        """Start a blocked read of each of `reads`, each on a connection of its own."""
        for read in reads:
            task = asyncio.ensure_future(self._read_slot(read, commands[read]))
            # Its error is raised to a caller, or dropped with it if none is left.
            task.add_done_callback(_retrieve)
            self._reads[read] = task

    async def _sweep(
        self, reads: Sequence[_Read], commands: dict[_Read, tuple[Arg, ...]]
    ) -> list[Any]:
        """Each slot's read without BLOCK, the reads of one master in one write on its
        connection, the masters side by side: the entries found, [] when none was. A slot
        that found none is no longer swept (`_note_warm`).

        A slot that moved (a redirect) is read again through `_send_to_slot`, which follows
        it. An error (NOGROUP) is raised unless another slot's read found entries: those are
        in this consumer's pending list now and must reach the caller (the failed slot is
        read again by the next call).
        """
        by_node: dict[Address, list[tuple[_Read, tuple[Arg, ...]]]] = {}
        for read in reads:
            command = commands[read]
            at = [upper(arg) if isinstance(arg, str | bytes) else "" for arg in command]
            block = at.index("BLOCK")
            unblocked = (*command[:block], *command[block + 2 :])
            by_node.setdefault(await self._address_of(read[0]), []).append((read, unblocked))
        try:
            answers = await asyncio.gather(
                *(
                    self.node(address).replies([command for _, command in batch])
                    for address, batch in by_node.items()
                )
            )
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError):
            await self._refresh()
            raise
        entries: list[Any] = []
        failure: BaseException | None = None
        for batch, replies in zip(by_node.values(), answers, strict=True):
            for (read, command), reply in zip(batch, replies, strict=True):
                if isinstance(reply, redis_errors.AskError):
                    try:
                        reply = (await self._send_to_slot([command], command_key(command)))[0]
                    except redis_errors.RedisError as exc:
                        reply = exc
                if isinstance(reply, BaseException):
                    failure = reply
                elif reply:
                    entries.extend(_stream_entries(reply))
                self._note_warm(read, warm=bool(reply) and not isinstance(reply, BaseException))
        if failure is not None and not entries:
            raise failure
        return entries

    def _note_warm(self, read: _Read, *, warm: bool) -> None:
        """Remember whether `read`'s last read found entries (see `_read_slots`)."""
        if not warm:
            self._warm_reads.discard(read)
        elif read not in self._warm_reads:
            if len(self._warm_reads) >= MAX_WARM_READS:
                self._warm_reads.clear()  # PollTasks worker ids come and go
            self._warm_reads.add(read)

    async def _close_idle_readers(self, now: float) -> None:
        """Close the connections of blocking reads no call asked for in `reader_idle_s` (at
        most one sweep a second). Entries a finished read took for a caller that stopped
        stay pending in Redis, reclaimed as those of a stopped consumer are."""
        if now - self._swept_at < min(1.0, self._reader_idle_s):
            return
        self._swept_at = now
        for read in [
            r for r, used in self._reader_used.items() if now - used > self._reader_idle_s
        ]:
            task = self._reads.get(read)
            if task is not None and not task.done():
                continue  # Still blocked: its BLOCK ends it, and a later sweep closes it.
            self._reads.pop(read, None)
            self._warm_reads.discard(read)
            del self._reader_used[read]
            reader = self._readers.pop(read, None)
            if reader is not None:
                await reader[1].aclose()

    async def _read_slot(self, read: _Read, command: Sequence[Arg]) -> Any:
        slot = read[0]
        for _ in range(MAX_REDIRECTS):
            address = await self._address_of(slot)
            known = self._readers.get(read)
            if known is None or known[0] != address:
                if known is not None:
                    await known[1].aclose()
                known = self._readers[read] = (address, self._connect(self._url(address)))
            try:
                return await known[1].execute(*command)
            except redis_errors.AskError:
                # Blocking reads wait for the slot to settle rather than follow ASK.
                await self._refresh(force=True)
            except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError):
                await self._refresh()
                raise
        raise redis_errors.ConnectionError(
            f"Redis Cluster kept redirecting a stream read after {MAX_REDIRECTS} tries"
        )

    async def masters(self) -> list[Address]:
        """The masters that serve slots, as the map has them (read first if it is empty)."""
        if all(address is None for address in self._slots):
            await self._refresh(force=True)
        return sorted({address for address in self._slots if address is not None})

    def node(self, address: Address) -> NodeCommands:
        """The connection to one node, made on first use."""
        node = self._nodes.get(address)
        if node is None:
            if self._closed:
                raise redis_errors.ConnectionError("the Redis client was closed")
            node = self._nodes[address] = self._connect(self._url(address))
        return node

    def _url(self, address: Address) -> str:
        host, port = address
        return urlunsplit(self._template._replace(netloc=_netloc(self._template, host, port)))

    async def _send(self, commands: Sequence[Sequence[Arg]], key: bytes | None) -> list[Any]:
        """`commands` back to back on the master of `key`'s slot, following redirects.

        SCRIPT (LOAD, FLUSH) goes to every master: the next EVALSHA may run on any of them.
        """
        if key is None and upper(commands[0][0]) == "SCRIPT":
            try:
                answers = await asyncio.gather(
                    *(self.node(address).replies(commands) for address in await self.masters())
                )
            except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError):
                # A master in the map went away: the caller's retry finds the new map.
                await self._refresh()
                raise
            # Every master must have taken it: a refusal anywhere is the caller's to see.
            return next(
                (a for a in answers if any(isinstance(r, BaseException) for r in a)), answers[0]
            )
        return await self._send_to_slot(commands, key)

    async def _send_to_slot(
        self, commands: Sequence[Sequence[Arg]], key: bytes | None
    ) -> list[Any]:
        slot = key_slot(key) if key is not None else None
        asking: Address | None = None
        retried = False
        for _ in range(MAX_REDIRECTS):
            # The slot's master from the map at once, without a coroutine, when it is known.
            address = asking or (slot is not None and self._slots[slot]) or None
            if address is None:
                address = await self._address_of(slot)
            batch = [("ASKING",), *commands] if asking else list(commands)
            try:
                replies = await self.node(address).replies(batch)
            except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError):
                # The node went away (a failover?): learn the new map, and resend only what
                # cannot do harm twice; the caller sees the error otherwise.
                await self._refresh()
                if retried or not all(retry_safe(command) for command in commands):
                    raise
                retried = True
                asking = None
                continue
            if asking:
                replies = replies[1:]
            asking = None
            redirect = next((r for r in replies if isinstance(r, redis_errors.AskError)), None)
            if redirect is None:
                return replies
            target = (redirect.host, int(redirect.port))
            if isinstance(redirect, redis_errors.MovedError):
                # The slot has a new owner for good: note it now, and the rest soon after.
                self._slots[redirect.slot_id] = target
                await self._refresh()
            else:
                asking = target
        raise redis_errors.ConnectionError(
            f"Redis Cluster kept redirecting a command after {MAX_REDIRECTS} tries"
        )

    async def _address_of(self, slot: int | None) -> Address:
        if slot is None:
            masters = await self.masters()
            if not masters:
                raise redis_errors.ConnectionError("the Redis Cluster has no master serving slots")
            return masters[0]
        address = self._slots[slot]
        if address is None:
            await self._refresh(force=True)
            address = self._slots[slot]
        if address is None:
            raise redis_errors.ClusterDownError(f"no Redis Cluster node serves slot {slot}")
        return address

    async def _refresh(self, *, force: bool = False) -> None:
        """Read the slot map from the first node that answers `CLUSTER SLOTS`."""
        loop = asyncio.get_running_loop()
        asked_at = loop.time()
        async with self._refresh_lock:
            # Someone refreshed while we queued, or just before: theirs is as new as ours.
            if self._refreshed_at >= asked_at or (
                not force and loop.time() - self._refreshed_at < REFRESH_INTERVAL_S
            ):
                return
            known = sorted({a for a in self._slots if a is not None})
            candidates = list(dict.fromkeys([*known, *self._seeds]))
            failure: Exception | None = None
            for address in candidates:
                try:
                    reply = await self.node(address).execute("CLUSTER", "SLOTS")
                except redis_errors.RedisError as exc:
                    failure = exc
                    continue
                self._slots = _slot_map(reply, address)
                self._refreshed_at = loop.time()
                await self._drop_unused()
                return
            self._refreshed_at = loop.time()
            if isinstance(failure, redis_errors.AuthenticationError):
                raise failure  # Said as Redis said it: the user or password is wrong.
            raise redis_errors.ConnectionError(
                f"no Redis Cluster node answers CLUSTER SLOTS: {failure}"
            ) from failure

    async def _drop_unused(self) -> None:
        # A master that lost its slots (failed over, or emptied) keeps no connection.
        serving = set(self._slots) | set(self._seeds)
        for address in [a for a in self._nodes if a not in serving]:
            await self._nodes.pop(address).aclose()


def _stream_entries(reply: Any) -> Any:
    """A stream read's reply as (stream, entries) pairs: RESP3 (redis-py's pool) answers a
    map of stream to entries."""
    return reply.items() if isinstance(reply, dict) else reply


def _has_reply(task: asyncio.Task[Any]) -> bool:
    """Whether a finished read has entries or an error for its caller."""
    return not task.cancelled() and (task.exception() is not None or bool(task.result()))


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _address(url: str) -> Address:
    parts = urlsplit(url)
    return (parts.hostname or "localhost", parts.port or 6379)


def _netloc(template: Any, host: str, port: int) -> str:
    userinfo, _, _ = template.netloc.rpartition("@")
    auth = f"{userinfo}@" if userinfo else ""
    shown = f"[{host}]" if ":" in host else host
    return f"{auth}{shown}:{port}"


def _slot_map(reply: Any, asked: Address) -> list[Address | None]:
    """`CLUSTER SLOTS` as the master of every slot. A node that does not know its own
    address answers with an empty host: the one it was reached at."""
    slots: list[Address | None] = [None] * SLOTS
    for first, last, master, *_replicas in reply:
        host = encode(master[0]).decode() or asked[0]
        address = (host, int(master[1]))
        for slot in range(int(first), int(last) + 1):
            slots[slot] = address
    return slots
