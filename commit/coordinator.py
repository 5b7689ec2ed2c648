"""The coordinator group's state machine.

The coordinator group is where transaction managers keep what must outlive
any one process. Today that is the epoch counter: a node asks for a fresh
epoch when it starts, and ids it makes as ``(epoch, counter)`` can never
repeat across restarts, because the epoch is Raft-replicated and only grows.
Transaction records join it with the commit protocols.
"""

from __future__ import annotations

from typing import Any

from consensus.errors import InvalidRequest


class CoordinatorState:
    def __init__(self) -> None:
        self.epoch = 0

    def apply(self, command: Any) -> Any:
        match command:
            case ("new_epoch",):
                self.epoch += 1
                return self.epoch
            case _:
                raise InvalidRequest(f"unknown coordinator command {command!r:.80}")
