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

Forgetting (docs/PROTOCOLS.md, "Forgetting"). ``finish`` records that every
participant acknowledged a transaction's outcome (the leader says so, in
batches); ``forget`` then drops the finished instances stamped below the
horizon (``stamp``: for Paxos Commit, the txid's creation time), and rewrites
the log once enough of it is dead (``Compaction``). An instance stamped below
the horizon that the acceptor does not hold is forgotten, not new: a ballot-0
2a for it is not accepted (the participant may have voted the other way long
ago) and a phase 1a is refused with ``Forgotten``, so that no leader takes
"nothing accepted" for "aborted". Unfinished instances are never forgotten,
however old: a participant in doubt still needs them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

from consensus.acceptor_log import AcceptorLog
from consensus.horizon import Forgotten
from consensus.paxos import AcceptorState, Ballot, ballot_of
from consensus.settings import Compaction, Durability


def _instance(raw: Any) -> Any:
    return tuple(raw) if isinstance(raw, list) else raw


def _unstamped(instance: Any) -> int:
    return 0  # nothing is below a horizon of 0: an acceptor whose caller stamps nothing forgets nothing


class Acceptor:
    """``values``: what this acceptor may accept, when its caller knows (``AcceptorLog`` checks its file).
    ``stamp``: an instance's place in the order of forgetting (its transaction's creation time)."""

    def __init__(self, name: str, path: Path, durability: Durability, values: Collection[Any] | None = None,
                 stamp: Callable[[Any], int] = _unstamped, compaction: Compaction = Compaction()) -> None:
        self.name = name
        self.state = AcceptorState()
        self.log = AcceptorLog(path, durability, values)
        self.stamp = stamp
        self.compaction = compaction
        for instance, promised, accepted_ballot, value in self.log.load():
            self.state.restore(
                _instance(instance), ballot_of(promised),
                ballot_of(accepted_ballot) if accepted_ballot is not None else None, value,
            )
        self.horizon = self.log.horizon
        self.finished: set[Any] = {i for i in map(_instance, self.log.finished) if i in self.state.instances}
        self._dirty: set[Any] = set()

    def forgotten(self, instance: Any) -> bool:
        """Whether ``instance``, which this acceptor does not hold, may have been held and forgotten."""
        return instance not in self.state.instances and self.stamp(instance) < self.horizon

    def accept_now(self, instance: Any, ballot: Ballot, value: Any) -> bool:
        if self.forgotten(instance):
            return False
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
        ``Forgotten`` if any of them was forgotten: no promise about it can be counted.
        """
        lost = [i for i in instances if self.forgotten(i)]
        if lost:
            raise Forgotten(f"acceptor {self.name} forgot {lost[0]!r:.80}: every participant had acknowledged "
                            f"its outcome", maybe_applied=True)
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

    async def finish(self, instances: Iterable[Any]) -> None:
        """Every participant acknowledged these instances' outcome: they may be forgotten once old enough."""
        known = [i for i in instances if i in self.state.instances and i not in self.finished]
        if known:
            await self.log.finish([list(i) for i in known])
            self.finished.update(known)

    async def forget(self, horizon: int) -> int:
        """Raise the horizon (never lower it), drop the finished instances stamped below it, and rewrite
        the log once enough of it is dead; returns how many instances were dropped."""
        self.horizon = max(self.horizon, horizon)
        dropped = [i for i in self.finished if self.stamp(i) < self.horizon]
        for instance in dropped:
            del self.state.instances[instance]
            self.finished.discard(instance)
            self._dirty.discard(instance)  # never written again: a record of it now would bring it back
        dead = self.log.written - len(self.state.instances)  # every record but each instance's latest
        if self.compaction.due(dead, self.log.written):
            await self.log.compact(self._live_records)
        return len(dropped)

    def _live_records(self) -> list[list[Any]]:
        """What a rewritten log holds: the horizon, the finished instances, then every instance's record."""
        return [["horizon", self.horizon], ["finished", [list(i) for i in self.finished]],
                *([list(i), *self.state.record(i)] for i in self.state.instances)]
