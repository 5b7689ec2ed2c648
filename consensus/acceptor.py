"""A node's Paxos acceptor: ``AcceptorState`` made durable by an ``AcceptorLog``.

Changes are made in memory and marked dirty; ``persist`` writes the dirty
instances in one (group-committed) write. Callers persist before any message
that reveals the change leaves the node: that is the acceptor's whole
durability contract, and it lets an acceptor that accepts N instances of one
transaction one by one make them durable with one forced write.

An instance stops being dirty only once a write of its current state is
durable. A write that fails (``StorageUnavailable``, a full disk) leaves its
instances dirty, so the next caller that would reveal them writes them again
first; the failed caller answers nothing. The memory may thus run ahead of the
log, but nothing of it leaves the node until the log has caught up.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

from consensus.acceptor_log import AcceptorLog
from consensus.paxos import AcceptorState, Ballot, ballot_of
from consensus.settings import Durability


def _instance(raw: Any) -> Any:
    return tuple(raw) if isinstance(raw, list) else raw


class Acceptor:
    """``values``: what this acceptor may accept, when its caller knows (``AcceptorLog`` checks its file)."""

    def __init__(self, name: str, path: Path, durability: Durability, values: Collection[Any] | None = None) -> None:
        self.name = name
        self.state = AcceptorState()
        self.log = AcceptorLog(path, durability, values)
        for instance, promised, accepted_ballot, value in self.log.load():
            self.state.restore(
                _instance(instance), ballot_of(promised),
                ballot_of(accepted_ballot) if accepted_ballot is not None else None, value,
            )
        self._dirty: set[Any] = set()

    def accept_now(self, instance: Any, ballot: Ballot, value: Any) -> bool:
        accepted = self.state.accept(instance, ballot, value)
        if accepted:
            self._dirty.add(instance)
        return accepted

    async def persist(self, instances: Iterable[Any]) -> int:
        """Write the dirty ones among ``instances``; returns how many records were written."""
        written = {i: self.state.record(i) for i in instances if i in self._dirty}
        if not written:
            return 0
        await self.log.persist([(list(i), *record) for i, record in written.items()])
        for instance, record in written.items():
            if self.state.record(instance) == record:  # not changed again while the write was under way
                self._dirty.discard(instance)
        return len(written)

    async def promise(
        self, ballot: Ballot, instances: list[Any]
    ) -> tuple[bool, dict[Any, tuple[Ballot | None, Any]], Ballot]:
        """Phase 1b for several instances at once, durable before it returns.

        Returns whether every instance promised ``ballot``, what each had accepted, and the highest
        promise now held among them (``ballot`` itself when all promised, a higher one otherwise).
        """
        promised = True
        accepted: dict[Any, tuple[Ballot | None, Any]] = {}
        for instance in instances:
            ok, acc_ballot, value = self.state.promise(instance, ballot)
            promised &= ok
            if ok:
                self._dirty.add(instance)
            accepted[instance] = (acc_ballot, value)
        await self.persist(instances)
        highest = max((self.state.get(i).promised for i in instances), default=ballot)
        return promised, accepted, highest

    async def accept(self, ballot: Ballot, values: dict[Any, Any]) -> dict[Any, Any]:
        """Phase 2b for several instances at once, durable before it returns: the ones accepted."""
        accepted = {i: v for i, v in values.items() if self.accept_now(i, ballot, v)}
        await self.persist(accepted)
        return accepted
