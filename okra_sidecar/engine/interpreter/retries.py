"""`try` at run time: how a caught error is handled, and when the next attempt starts.

Catch clauses and retry policies are compiled at load (definitions/try_compiler.py).

How a caught error is handled (the interpreter follows this):

1. The error must pass `catch.errors.with` (faults.error_matches), then `catch.when` (true) and
   `catch.exceptWhen` (false). Both conditions see the error as `.` and as `$<as>`.
2. With a `retry` policy whose own `when`/`exceptWhen` allow it, the `try` tasks run again from
   the first one, with the try task's input, after retry_delay_ms(). When the policy's limits
   are exhausted (`limit.attempt.count` retries done, or the next attempt would start after
   `limit.duration` from the first one), `catch.do` handles the error if there is one;
   otherwise the error goes on as uncaught.
3. Without a retry (or when the policy's conditions refuse one), `catch.do` runs with `$<as>`
   bound and the try task's input; its output is the try task's output. Without `catch.do` the
   try task outputs its input.

`limit.attempt.duration` bounds each attempt: an attempt still running after it is interrupted
with a timeout error (408), handled like any other error of the attempt.

Delays: `delay` (default zero) is scaled by the backoff, for retry number n (1, 2, ...):
constant -> delay, linear -> delay * n, exponential -> delay * 2^(n-1). `jitter` adds a duration
between `from` and `to`, derived from the instance id, the try task and n by hashing: the same
turn computes the same delay, so that a re-run turn changes nothing.
"""

from __future__ import annotations

import hashlib

__all__ = ["jitter_ms", "retry_delay_ms"]


def jitter_ms(low: int, high: int, seed: str) -> int:
    """A duration in [low, high], the same for the same seed."""
    if high <= low:
        return low
    digest = hashlib.blake2b(seed.encode(), digest_size=8).digest()
    return low + int.from_bytes(digest, "big") % (high - low + 1)


def retry_delay_ms(backoff: str, delay: int, retry: int) -> int:
    """The delay before retry number `retry` (1-based), before jitter."""
    if backoff == "linear":
        return delay * retry
    if backoff == "exponential":
        return int(delay * 2 ** (retry - 1))
    return delay
