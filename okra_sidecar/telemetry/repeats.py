"""RepeatedWarnings: one log line per kind of trouble every few seconds, with a count.

A Redis failover fails every loop's attempt for seconds on end, each loop retrying several
times a second: one warning per attempt buries the log an operator reads. The first warning
of a kind goes out at once; the same kind again within `every_s` is counted instead, and the
next line that goes out says how many were held back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["REPEAT_EVERY_S", "RepeatedWarnings"]

REPEAT_EVERY_S = 5.0


class RepeatedWarnings:
    """Warnings on `logger`, at most one per kind every `every_s` seconds.

    Args:
        logger: Where the lines go.
        every_s: The quiet time after a kind's line.
        clock: Seconds, monotonic (a test passes its own).
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        every_s: float = REPEAT_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._every_s = every_s
        self._clock = clock
        # kind -> (when its last line went out, how many came since)
        self._seen: dict[Hashable, tuple[float, int]] = {}

    def warning(self, kind: Hashable, message: str, *args: Any, **kwargs: Any) -> None:
        """Log `message % args` unless a line of `kind` went out within `every_s`.

        `kind` should be a short, bounded value (a loop's name and the error's class), never
        an id: one entry is kept per kind.
        """
        now = self._clock()
        last = self._seen.get(kind)
        if last is not None and now - last[0] < self._every_s:
            self._seen[kind] = (last[0], last[1] + 1)
            return
        self._seen[kind] = (now, 0)
        if last is not None and last[1]:
            message += " (%d more like it in the last %.0f s)"
            args = (*args, last[1], now - last[0])
        self._logger.warning(message, *args, **kwargs)
