"""One retry policy for every client call and every ``db.run``, in the manner of FoundationDB's ``on_error``.

A caller runs attempts in a loop. Before each one it asks ``start_attempt`` for
the time it may take (which raises once the deadline has passed); a failure it
hands to ``on_error``, which either returns after a jittered exponential
backoff (try again) or raises the error the caller's caller should see. Whether
an error is worth another attempt is the error's own ``retryable``
(``consensus.errors``); the policy adds the limits (``timeouts.client_deadline_s``,
a number of attempts) and keeps the one fact that must survive the attempts:
whether any of them may have been applied. The error it gives up with says so
(``Timeout(maybe_applied=True)``), or says nothing was (``Unavailable``).

The two loops that use it differ only in what an attempt is: one request,
re-sent with the same ``(session, seq)`` (``commit.client``), or one whole
transaction with a txid of its own (``commit.transaction``), whose commit is
settled by a status question before it counts as a failure.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import trio

from commit.config import Timeouts
from consensus.errors import ClusterError, Timeout, Unavailable


@dataclass
class RetryPolicy:
    what: str
    timeouts: Timeouts
    deadline: float
    max_attempts: int | None = None
    attempts: int = 0
    backoffs: int = 0
    maybe_applied: bool = False
    last: ClusterError | None = None

    @classmethod
    def starting_now(cls, what: str, timeouts: Timeouts, max_attempts: int | None = None) -> RetryPolicy:
        return cls(what, timeouts, trio.current_time() + timeouts.client_deadline_s, max_attempts)

    def start_attempt(self) -> float:
        """The time the next attempt may take; raises the give-up error once the deadline has passed."""
        remaining = self.deadline - trio.current_time()
        if remaining <= 0:
            raise self._gave_up()
        self.attempts += 1
        return remaining

    async def on_error(self, exc: ClusterError, *, backoff: bool = True, may_have_applied: bool | None = None) -> None:
        """Return when another attempt is worth making (after backing off); raise otherwise.

        ``backoff=False`` is for a redirect to a named leader, tried at once. ``may_have_applied`` is for a
        caller that knows better than the error: a transaction's failed attempt changed nothing unless its
        commit said ``CommitUnknown``, which the caller settles before it gets here.
        """
        if not exc.retryable:
            raise exc
        self.last = exc
        self.maybe_applied |= exc.maybe_applied if may_have_applied is None else may_have_applied
        if self.max_attempts is not None and self.attempts >= self.max_attempts:
            raise self._gave_up()
        if backoff:
            cap = min(self.timeouts.backoff_max_s, self.timeouts.backoff_initial_s * 2**self.backoffs)
            self.backoffs += 1
            await trio.sleep(min(random.uniform(0, cap), max(0.0, self.deadline - trio.current_time())))

    def _gave_up(self) -> ClusterError:
        message = f"{self.what} gave up after {self.attempts} attempts: {self.last}"
        if self.maybe_applied:
            return Timeout(message, maybe_applied=True)
        return Unavailable(message)


def poll_delays(timeouts: Timeouts) -> Iterator[float]:
    """The waits between looks at something that ends by itself (a saga, an outcome): short at first, since
    most end within milliseconds and a fixed ``status_poll_s`` would add up to that much to each, then
    doubling up to ``status_poll_s``."""
    delay = timeouts.backoff_initial_s
    while True:
        yield delay
        delay = min(delay * 2, timeouts.status_poll_s)
