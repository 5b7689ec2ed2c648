"""Test-only hold points: named steps where a coordinator (or a Paxos participant) freezes, so a test can
kill -9 it there. Armed through ``test.hold`` only with ``transactions.fault_hooks = true``; an armed point
stays armed until the node restarts."""

from __future__ import annotations

import logging

import trio

from consensus.errors import InvalidRequest

log = logging.getLogger(__name__)

HOLD_POINTS = (
    "coordinator.after_votes",
    "coordinator.after_one_precommit",
    "coordinator.after_decision",
    "participant.before_2a",
)


class FaultHooks:
    """Named points where a test can freeze a coordinator (then kill -9 it)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.armed: set[str] = set()

    def arm(self, point: str) -> None:
        if not self.enabled:
            raise InvalidRequest("fault hooks are disabled (transactions.fault_hooks = false)")
        if point not in HOLD_POINTS:
            raise InvalidRequest(f"unknown hold point {point!r}; known: {', '.join(HOLD_POINTS)}")
        self.armed.add(point)

    def armed_at(self, point: str) -> bool:
        return point in self.armed

    async def checkpoint(self, point: str, txid: str) -> None:
        if point in self.armed:
            log.warning("HOLD %s at %s (test fault hook)", txid, point)
            await trio.sleep_forever()
