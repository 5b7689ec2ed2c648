"""Paxos Commit away from the leader, sans-IO: an acceptor's ballot-0 bundles, and the fast learners.

Gray & Lamport, "Consensus on Transaction Commit" (2006), sections 4 and 5.

* ``AcceptorBundles`` (every acceptor): a participant's vote reaches it as phase 2a at ballot 0, and
  the acceptor accepts it unless it promised a higher ballot (a recovery got there first). Once it has
  accepted a ballot-0 value for every participant of the transaction, it makes them durable in one
  forced write and sends ONE bundled phase 2b to the leader (and, for Faster Paxos Commit, to every
  participant). An "aborted" value goes out at once, unbundled, with the participant's reason: it
  decides the transaction alone. Effects, in the order the driver must keep: ``PersistAcceptances``
  (the write, before anything that reveals it), then ``Send2b``, then ``SendLearn``.
* ``FastLearner`` (a participant, Faster Paxos Commit): tallies the acceptors' bundles; once every
  instance has F+1 acceptors at "prepared", or any acceptor reports "aborted", the participant knows
  the outcome without waiting for the leader.

The node runs these with ``commit.node.paxos_roles`` and the simulator with ``tests/sim/paxos_world``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from commit.outcomes import ABORTED, COMMITTED, PREPARED
from consensus.bounded import BoundedTable


@dataclass(frozen=True, slots=True, kw_only=True)
class Vote2a:
    """A participant's ballot-0 phase 2a, and whether this acceptor accepted it (its ``AcceptorState``)."""

    txid: str
    shard: str
    value: str
    reason: str
    participants: tuple[str, ...]
    leader: str
    fast: bool
    hop: int
    accepted: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class PersistAcceptances:
    """Make these instances' acceptances durable (one forced write) before the 2b that reveals them leaves."""

    txid: str
    participants: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Send2b:
    """Phase 2b at ballot 0 to the leader; ``reasons`` say why each "aborted" participant voted no."""

    txid: str
    leader: str
    values: dict[str, str]
    reasons: dict[str, str]
    hop: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SendLearn:
    """Faster Paxos Commit: the same 2b to one participant, which learns from F+1 of them."""

    txid: str
    shard: str
    values: dict[str, str]
    participants: tuple[str, ...]
    hop: int


@dataclass(slots=True)
class _Bundle:
    participants: tuple[str, ...]
    leader: str
    fast: bool
    hop: int
    values: dict[str, str] = field(default_factory=dict)
    sent: bool = False


class AcceptorBundles:
    EFFECTS = (PersistAcceptances, Send2b, SendLearn)

    def __init__(self, cap: int) -> None:
        self._bundles: BoundedTable[str, _Bundle] = BoundedTable(cap)

    def on_2a(self, vote: Vote2a) -> list[PersistAcceptances | Send2b | SendLearn]:
        if not vote.accepted:
            # A recovery ballot got here first: this acceptor promised not to accept ballot 0 any more, and
            # reporting the value as accepted could let a leader count a quorum that never was.
            return []
        bundle = self._bundles.get(vote.txid)
        if bundle is None:
            bundle = self._bundles.remember(vote.txid, _Bundle(vote.participants, vote.leader, vote.fast, vote.hop))
        bundle.values[vote.shard] = vote.value
        bundle.hop = max(bundle.hop, vote.hop)
        if vote.value == PREPARED:
            if bundle.sent or set(bundle.values) != set(vote.participants):
                return []
            bundle.sent = True
            return self._send(vote.txid, bundle, vote.participants, dict(bundle.values), {})
        return self._send(vote.txid, bundle, (vote.shard,), {vote.shard: vote.value}, {vote.shard: vote.reason})

    def forget(self, txid: str) -> None:
        """Every participant acknowledged txid's outcome: its bundle, sent or not, is of no more use."""
        self._bundles.pop(txid, None)

    @staticmethod
    def _send(txid: str, bundle: _Bundle, durable: tuple[str, ...], values: dict[str, str],
              reasons: dict[str, str]) -> list[PersistAcceptances | Send2b | SendLearn]:
        hop = bundle.hop + 1
        effects: list[PersistAcceptances | Send2b | SendLearn] = [
            PersistAcceptances(txid=txid, participants=durable),
            Send2b(txid=txid, leader=bundle.leader, values=values, reasons=reasons, hop=hop),
        ]
        if bundle.fast:
            effects += [SendLearn(txid=txid, shard=p, values=values, participants=bundle.participants, hop=hop)
                        for p in bundle.participants]
        return effects


class FastLearner:
    def __init__(self, quorum: int, cap: int) -> None:
        self.quorum = quorum
        self._tallies: BoundedTable[tuple[str, str], dict[str, dict[str, str]]] = BoundedTable(cap)

    def on_2b(self, txid: str, shard: str, acceptor: str, values: dict[str, str],
              participants: tuple[str, ...]) -> str | None:
        """Tally ``acceptor``'s bundle at ``shard``; the outcome once it is known (then forgotten), else None."""
        tally = self._tallies.get((txid, shard))
        if tally is None:
            tally = self._tallies.remember((txid, shard), {})
        tally[acceptor] = values
        if any(v == ABORTED for bundle in tally.values() for v in bundle.values()):
            outcome = ABORTED
        elif all(sum(1 for b in tally.values() if b.get(p) == PREPARED) >= self.quorum for p in participants):
            outcome = COMMITTED
        else:
            return None
        del self._tallies[(txid, shard)]
        return outcome
