"""TurnBoard: what an engine process is interpreting right now, readable by its parent.

jq holds the GIL while it evaluates, so nothing inside the evaluating process can stop an
expression that loops or allocates without end: not a thread, not a signal handler. The parent
of an engine child can. The child marks on a page of memory it shares with its parent when a
turn and each jq evaluation start and end, and which instance and task they belong to; the
parent reads the page on its own clock, kills a child that stays in one evaluation or one
turn past its budget, and knows which instance to fail (watchdog.py). Writing the marks
costs a clock read and a `pack_into`, well under a microsecond.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
import time
from dataclasses import dataclass

__all__ = ["BOARD_SIZE", "BoardReading", "TurnBoard", "current", "install"]

BOARD_SIZE = 1032
_READY_AT = 1024  # set once by the child when it is set up (a spare waits for its turn)
_STAMPS = struct.Struct("<qq")  # turn started, evaluation started (monotonic ns, 0: none)
_STAMP = struct.Struct("<q")
_TEXT_LEN = struct.Struct("<H")
_INSTANCE_AT, _INSTANCE_MAX = 16, 110
_TASK_AT, _TASK_MAX = 128, _READY_AT - 128 - _TEXT_LEN.size


@dataclass(frozen=True)
class BoardReading:
    """One look at a board: when the turn and evaluation in progress began, and where."""

    turn_started_ns: int
    evaluation_started_ns: int
    instance_id: str
    task: str


class TurnBoard:
    """The shared page of one engine process. Without a page (in-process turns) it marks nothing."""

    __slots__ = ("_page",)

    def __init__(self, page: mmap.mmap | None) -> None:
        self._page = page

    @classmethod
    def create(cls) -> tuple[TurnBoard, int]:
        """A new board on an unlinked file; returns it and the descriptor to pass to a child."""
        fd, path = tempfile.mkstemp(prefix="okra-board-")
        os.unlink(path)  # nothing to clean up if either process dies
        os.ftruncate(fd, BOARD_SIZE)
        return cls(mmap.mmap(fd, BOARD_SIZE)), fd

    @classmethod
    def attach(cls, fd: int) -> TurnBoard:
        """In the child: the board its parent created."""
        page = mmap.mmap(fd, BOARD_SIZE)
        os.close(fd)
        return cls(page)

    def close(self) -> None:
        if self._page is not None:
            self._page.close()
            self._page = None

    def begin_turn(self, instance_id: str) -> None:
        page = self._page
        if page is None:
            return
        _TEXT_LEN.pack_into(page, _TASK_AT, 0)  # no task yet: an empty text
        _put_text(page, _INSTANCE_AT, _INSTANCE_MAX, instance_id)
        _STAMPS.pack_into(page, 0, time.monotonic_ns(), 0)

    def end_turn(self) -> None:
        if self._page is not None:
            _STAMPS.pack_into(self._page, 0, 0, 0)

    def enter_task(self, pointer: str) -> None:
        if self._page is not None:
            # One copy of bytes made once per task pointer: this runs for every task.
            blob = _TASK_BLOBS.get(pointer) or _task_blob(pointer)
            self._page[_TASK_AT : _TASK_AT + len(blob)] = blob

    def begin_evaluation(self) -> None:
        if self._page is not None:
            _STAMP.pack_into(self._page, 8, time.monotonic_ns())

    def end_evaluation(self) -> None:
        if self._page is not None:
            _STAMP.pack_into(self._page, 8, 0)

    def mark_ready(self) -> None:
        if self._page is not None:
            _STAMP.pack_into(self._page, _READY_AT, 1)

    @property
    def ready(self) -> bool:
        return self._page is not None and _STAMP.unpack_from(self._page, _READY_AT)[0] == 1

    def read(self) -> BoardReading:
        page = self._page
        if page is None:
            return BoardReading(0, 0, "", "")
        turn, evaluation = _STAMPS.unpack_from(page, 0)
        return BoardReading(
            turn, evaluation, _get_text(page, _INSTANCE_AT), _get_text(page, _TASK_AT)
        )


def _put_text(page: mmap.mmap, at: int, most: int, text: str) -> None:
    data = text.encode()[:most]
    _TEXT_LEN.pack_into(page, at, len(data))
    page[at + 2 : at + 2 + len(data)] = data


_TASK_BLOBS: dict[str, bytes] = {}


def _task_blob(pointer: str) -> bytes:
    """A task pointer as the board holds it: its length, then its bytes."""
    data = pointer.encode()[:_TASK_MAX]
    if len(_TASK_BLOBS) >= 4096:
        _TASK_BLOBS.clear()
    blob = _TASK_BLOBS[pointer] = _TEXT_LEN.pack(len(data)) + data
    return blob


def _get_text(page: mmap.mmap, at: int) -> str:
    (length,) = _TEXT_LEN.unpack_from(page, at)
    return page[at + 2 : at + 2 + length].decode(errors="replace")


_current = TurnBoard(None)


def current() -> TurnBoard:
    """The board of this process (one that marks nothing unless `install` was called)."""
    return _current


def install(board: TurnBoard) -> None:
    """Make `board` the one the interpreter and the expressions mark (an engine child's)."""
    global _current
    _current = board
