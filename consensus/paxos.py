"""Paxos acceptors and ballots, one Paxos instance per key (Lamport, "Paxos Made Simple").

Pure and deterministic: ``AcceptorState`` is the acceptor's whole memory and
``acceptor_log`` makes it durable. Nothing here knows what the values mean;
Paxos Commit (``commit.protocols.paxos_commit``) runs one instance per
participant of a transaction, with values "prepared" and "aborted".

Ballots are tuples compared lexicographically. ``BALLOT_ZERO`` is special,
as in Gray & Lamport's Paxos Commit: an instance's owner may send phase 2a
at ballot 0 without a phase 1, because nobody else ever uses ballot 0. Every
other ballot is ``(term, rank, counter)``: the Raft term of the proposing
leader, its rank among the acceptors and a counter, so two leaders never use
the same ballot, and a leader after a restart (a later term) always uses
higher ones. The Raft term is durable, which is what keeps "the highest
ballot used" durable without a write of its own.

The two rules an acceptor keeps:
* never accept a ballot below its promise;
* promise a ballot only if it is higher than every earlier promise, and answer
  with the highest-ballot value it accepted so far.

An acceptor can ignore any request without compromising safety (Lamport,
"Paxos Made Simple", 2001), so it also refuses a ballot no real leader can
have made yet (``unissued``): a promise to a ballot from a later term would
outrank every real leader's, and the instance would never be recovered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Ballot = tuple[int, int, int]
BALLOT_ZERO: Ballot = (0, 0, 0)
NO_PROMISE: Ballot = (-1, -1, -1)


@dataclass(slots=True)
class InstanceState:
    promised: Ballot = NO_PROMISE
    accepted_ballot: Ballot | None = None
    accepted_value: Any = None


def ballot_of(raw: Any) -> Ballot:
    """A ballot from the wire (msgpack sends tuples as lists); ValueError if malformed."""
    if not (isinstance(raw, (list, tuple)) and len(raw) == 3 and all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in raw)):
        raise ValueError(f"malformed ballot {raw!r:.60}")
    return (raw[0], raw[1], raw[2])


def unissued(ballot: Ballot, term: int, leader_rank: int | None, ranks: int) -> str | None:
    """Why no leader can have proposed ``ballot`` by now, or None if one may have.

    A leader's ballots are ``(term, rank, counter)``: the Raft term it leads the group in, and its rank
    among the ``ranks`` acceptors. So a real ballot's term is at least 1 and at most ``term``, the current
    one (a leader of a later term does not exist yet: its ballot would outrank every real leader's for
    good), its rank names an acceptor, and in the current term it is the rank of that term's one leader
    (``leader_rank``, None while this acceptor does not know it). Ballot 0 is the participants' own.
    Refusing is always safe, and costs a real leader whose term this acceptor has not heard of yet only a
    retry.
    """
    their_term, rank, _ = ballot
    if ballot == BALLOT_ZERO:
        return "ballot 0 belongs to the participants"
    if not 1 <= their_term <= term:
        return f"ballot {list(ballot)} is not of a term a leader has had (the current term is {term})"
    if rank >= ranks:
        return f"ballot {list(ballot)} has rank {rank}, but there are {ranks} acceptors"
    if their_term == term and rank != leader_rank:
        return f"ballot {list(ballot)} is of the current term, whose leader has rank {leader_rank}"
    return None


class AcceptorState:
    def __init__(self) -> None:
        self.instances: dict[Any, InstanceState] = {}

    def get(self, instance: Any) -> InstanceState:
        return self.instances.get(instance) or InstanceState()

    def promise(self, instance: Any, ballot: Ballot) -> tuple[bool, Ballot | None, Any]:
        """Phase 1b: ``(promised, accepted_ballot, accepted_value)``; changes state only if promised."""
        state = self.instances.setdefault(instance, InstanceState())
        if ballot <= state.promised:
            return False, state.accepted_ballot, state.accepted_value
        state.promised = ballot
        return True, state.accepted_ballot, state.accepted_value

    def accept(self, instance: Any, ballot: Ballot, value: Any) -> bool:
        """Phase 2b: whether the value was accepted at ``ballot``."""
        state = self.instances.setdefault(instance, InstanceState())
        if ballot < state.promised:
            return False
        if state.accepted_ballot is not None and state.accepted_ballot == ballot and state.accepted_value != value:
            return False  # one value per ballot: a second, different 2a at the same ballot is a bug elsewhere
        state.promised = ballot
        state.accepted_ballot = ballot
        state.accepted_value = value
        return True

    def record(self, instance: Any) -> tuple[Ballot, Ballot | None, Any]:
        """What must be durable about ``instance`` before the acceptor answers."""
        state = self.get(instance)
        return state.promised, state.accepted_ballot, state.accepted_value

    def restore(self, instance: Any, promised: Ballot, accepted_ballot: Ballot | None, value: Any) -> None:
        self.instances[instance] = InstanceState(promised, accepted_ballot, value)
