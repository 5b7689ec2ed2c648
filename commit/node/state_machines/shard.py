"""The shard state machine: versioned keys, locks, and the participant side of commit.

Pure and deterministic (it runs inside ``consensus.group`` on every replica):
no clock, no randomness, no iteration over sets. Everything a participant in
an atomic-commit protocol must remember is here, in replicated state, so a
shard leader can crash at any point without the shard forgetting a vote.

Versions: a version is the shard's write counter at the time of the write,
so versions of a key only grow, and a deleted key keeps a tombstone with its
deletion version (a reader that saw "absent at version 7" can tell the key
was created and deleted since). Values are opaque bytes (msgpack from the
client).

Concurrency control is optimistic, validated at prepare (DESIGN.md section 6):

``prepare(txid, reads, writes)``  ONE replicated command: every read version
    must be unchanged and unlocked by others, every written key unlocked by
    others; then shared locks on read keys, exclusive locks on written keys,
    and the writes are recorded. A conflict votes NO at once (no waiting, so
    no deadlock), and a NO is final: the shard records the txid as aborted.
    A PREPARE of a transaction already decided here answers
    ``("decided", outcome)``: it is not a new vote.
``commit(txid)`` / ``abort(txid)``  apply or drop the prepared writes and
    release the locks. Idempotent. Either for a txid the shard has no record
    of records it as aborted, so a PREPARE that arrives later votes NO and
    never locks: with no information about a transaction, presume it aborted
    (presumed abort: Mohan, Lindsay & Obermarck, "Transaction Management in
    the R* Distributed Database Management System", ACM TODS 11(4), 1986).
    ``abort`` then answers ``aborted``, and ``commit`` answers ``unknown``,
    which the participant's handler turns into ``not_prepared``.
    A COMMIT reaches a shard that never prepared its txid only if the decision
    is not a real one (every participant voted YES before any commit was
    decided); nothing is left to apply, and the sender may stop re-sending.
``refuse(txid)``  the question a recovering coordinator or a status query
    asks: "what is your state for txid?". A shard that never prepared txid
    records it as aborted before answering, so a PREPARE that arrives later
    votes NO: this is what makes presumed abort safe.
``commit_one(txid, reads, writes)``  one-phase commit of a single-shard
    transaction: validate and apply in one command.
``3pc_join(txid, round)`` / ``3pc_move(txid, round, target)`` /
``3pc_timeout_abort(txid)``  Three-Phase Commit's participant states
    (``commit.protocols.three_phase``): a prepared transaction is
    ``waiting``, ``precommitted`` or ``preaborted``, and remembers the highest
    termination round it joined; a move from a lower round is refused, and
    precommitted and preaborted never turn into each other. Each answers
    ``(state, promised round)``.
``put`` / ``delete``  single-key writes; they fail with ``Conflict`` on a
    locked key instead of breaking a prepared transaction's isolation, and
    change nothing then (so a retry of the same session command runs again:
    ``consensus.sessions``).

``forget(horizon)``  the shard leader's periodic command (``commit.node.forgetting``):
    forget every decided transaction whose txid was made before ``horizon``
    (milliseconds, the leader's clock minus ``limits.forget_after_s``; the
    horizon only rises, and ``limits.max_remembered_transactions`` raises it
    too when the table is full). Prepared transactions are never forgotten.
    Every command about a txid made before the horizon that the shard does not
    hold is answered ``forgotten`` and changes nothing: the shard may have
    committed it, so it must neither fence it (presumed abort would turn a
    forgotten commit into an abort) nor prepare it (a very late duplicate
    PREPARE must not lock anything, vote again, or be aborted while its commit
    was applied). This is presumed abort's rule with a log truncated below a
    low-water mark (Mohan, Lindsay & Obermarck 1986; Gray & Reuter,
    "Transaction Processing", 9.6): below the mark, "no record" no longer
    means "never heard of it" (``consensus.horizon``).

A participant never decides a prepared transaction on its own: only
``commit`` or ``abort`` from the outcome of the coordinator ends it; the
one exception is 3PC's ``3pc_timeout_abort``, which only a ``waiting``
participant that never joined a termination round may take.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from commit.config import Limits
from commit.errors import CommitUnknown, Conflict
from commit.outcomes import ABORTED, COMMITTED, FORGOTTEN, PREPARED, UNKNOWN
from commit.protocols.three_phase import COORDINATOR_ROUND, PREABORTED, PRECOMMITTED, WAITING, Round
from commit.txids import created_ms
from consensus.errors import InternalError, InvalidRequest
from consensus.horizon import HorizonTable


Reads = tuple[tuple[bytes, int], ...]
Writes = tuple[tuple[bytes, bytes | None], ...]


@dataclass(frozen=True, slots=True)
class Cell:
    value: bytes | None  # None is a tombstone
    version: int


ABSENT = Cell(None, 0)


@dataclass(slots=True)
class Lock:
    exclusive: str | None = None
    shared: dict[str, None] = field(default_factory=dict)  # ordered, unlike a set

    def held_by_other(self, txid: str) -> str | None:
        if self.exclusive is not None and self.exclusive != txid:
            return self.exclusive
        return next((t for t in self.shared if t != txid), None)


@dataclass(frozen=True, slots=True)
class Prepared:
    reads: Reads
    writes: Writes
    participants: tuple[str, ...] = ()  # Paxos Commit and 3PC: whom a recovering leader or terminator asks
    phase: str = WAITING  # 3PC only: waiting, precommitted or preaborted
    promised: Round = COORDINATOR_ROUND  # 3PC only: the highest termination round joined


class ShardState:
    def __init__(self, max_decided: int = Limits.max_remembered_transactions, *, read_skips_lock: bool = False) -> None:
        self.read_skips_lock = read_skips_lock  # the read-skips-lock mutant only (commit.protocols.mutants)
        self.cells: dict[bytes, Cell] = {}
        self.write_counter = 0
        self.locks: dict[bytes, Lock] = {}
        self.prepared: dict[str, Prepared] = {}
        self.decided: HorizonTable[str, str] = HorizonTable(max_decided)
        self.outcomes = {COMMITTED: 0, ABORTED: 0}

    # -- reads (local, after a read barrier) ---------------------------------------

    def read(self, key: bytes) -> Cell:
        return self.cells.get(key, ABSENT)

    def writer_of(self, key: bytes) -> str | None:
        """The prepared transaction that holds the exclusive lock on ``key``, if any: what a read waits on."""
        lock = self.locks.get(key)
        return lock.exclusive if lock is not None else None

    def holder_of(self, key: bytes) -> str | None:
        """A prepared transaction holding any lock on ``key``, if any: what a single-key write waits on."""
        lock = self.locks.get(key)
        return lock.held_by_other("") if lock is not None else None

    def live_keys(self) -> int:
        return sum(1 for cell in self.cells.values() if cell.value is not None)

    def state_of(self, txid: str) -> str | None:
        """prepared, committed, aborted, ``forgotten`` (decided here long ago, maybe), or None: never seen."""
        if txid in self.prepared:
            return PREPARED
        decided = self.decided.get(txid)
        if decided is None and self.decided.forgotten(created_ms(txid)):
            return FORGOTTEN
        return decided

    # -- commands ------------------------------------------------------------------

    def apply(self, command: Any) -> Any:
        match command:
            case ("put", bytes() as key, bytes() as value):
                self._check_unlocked(key)
                return self._write(key, value)
            case ("delete", bytes() as key):
                self._check_unlocked(key)
                return self._write(key, None)
            case ("prepare", str() as txid, tuple() as reads, tuple() as writes):
                return self._prepare(txid, reads, writes, ())
            case ("prepare", str() as txid, tuple() as reads, tuple() as writes, tuple() as participants):
                return self._prepare(txid, reads, writes, participants)
            case ("forget", int() as horizon):
                return self.decided.forget_before(horizon)
            case ("commit", str() as txid):
                return self._commit(txid)
            case ("abort", str() as txid):
                return self._abort(txid)
            case ("refuse", str() as txid):
                state = self.state_of(txid)
                if state is None:
                    self._decide(txid, ABORTED)
                    return ABORTED
                return state
            case ("commit_one", str() as txid, tuple() as reads, tuple() as writes):
                return self._commit_one(txid, reads, writes)
            case ("3pc_join", str() as txid, (int(), int()) as round_):
                return self._join(txid, round_)
            case ("3pc_move", str() as txid, (int(), int()) as round_, str() as target) if target in (
                PRECOMMITTED, PREABORTED
            ):
                return self._move(txid, round_, target)
            case ("3pc_timeout_abort", str() as txid):
                prepared = self.prepared.get(txid)
                if prepared is not None and prepared.phase == WAITING and prepared.promised == COORDINATOR_ROUND:
                    self._abort(txid)
                return self._three_phase_state(txid)
            case _:
                raise InvalidRequest(f"unknown shard command {command!r:.80}")

    def _check_unlocked(self, key: bytes) -> None:
        holder = self.holder_of(key)
        if holder is not None:
            raise Conflict(f"key {key!r:.60} is locked by transaction {holder}", txid=holder)

    def _write(self, key: bytes, value: bytes | None) -> int:
        self.write_counter += 1
        self.cells[key] = Cell(value, self.write_counter)
        return self.write_counter

    def _conflict(self, txid: str, reads: Reads, writes: Writes) -> str | None:
        """Why this transaction cannot prepare here, or None if it can."""
        for key, version in reads:
            current = self.read(key).version
            if current != version:
                return f"read of {key!r:.60} at version {version} is stale (now {current})"
            lock = self.locks.get(key)
            if lock is not None and lock.exclusive not in (None, txid) and not self.read_skips_lock:
                return f"{key!r:.60} is being written by {lock.exclusive}"
        for key, _ in writes:
            lock = self.locks.get(key)
            holder = lock.held_by_other(txid) if lock is not None else None
            if holder is not None:
                return f"{key!r:.60} is locked by {holder}"
        return None

    def _prepare(self, txid: str, reads: Reads, writes: Writes, participants: tuple[str, ...]) -> Any:
        state = self.state_of(txid)
        if state == PREPARED:
            held = self.prepared[txid]
            if (held.reads, held.writes) != (tuple(reads), tuple(writes)):
                # A second PREPARE of txid must be the first one again (a retry), never other reads and
                # writes: its vote stands for what it locked, and it cannot vote twice.
                raise InvalidRequest(f"{txid} is prepared here with other reads and writes")
            return "yes"
        if state == FORGOTTEN:
            # Older than what this shard remembers: it may have voted and committed it. Refused, not a vote.
            return (FORGOTTEN, f"{txid} is older than anything this shard remembers: too old, forgotten")
        if state is not None:
            # A late or duplicated PREPARE of a decided transaction: not a new vote. (A Paxos Commit
            # participant must never propose a second value at its ballot 0.)
            return ("decided", state)
        reason = self._conflict(txid, reads, writes)
        if reason is not None:
            self._decide(txid, ABORTED)
            return ("no", reason)
        written = {key for key, _ in writes}
        for key, _ in reads:
            if key not in written:
                self.locks.setdefault(key, Lock()).shared[txid] = None
        for key in written:
            self.locks.setdefault(key, Lock()).exclusive = txid
        self.prepared[txid] = Prepared(reads, writes, participants)
        return "yes"

    def _release(self, txid: str, prepared: Prepared) -> None:
        for key in [k for k, _ in prepared.reads] + [k for k, _ in prepared.writes]:
            lock = self.locks.get(key)
            if lock is None:
                continue
            if lock.exclusive == txid:
                lock.exclusive = None
            lock.shared.pop(txid, None)
            if lock.exclusive is None and not lock.shared:
                del self.locks[key]

    def _decide(self, txid: str, outcome: str) -> None:
        self.decided.remember(txid, created_ms(txid), outcome)
        self.outcomes[outcome] += 1

    def _commit(self, txid: str) -> Any:
        prepared = self.prepared.pop(txid, None)
        if prepared is None:
            state = self.state_of(txid)
            if state in (COMMITTED, FORGOTTEN):
                return state
            if state is None:
                self._decide(txid, ABORTED)  # never prepared here: fenced, so that it never will be
                return UNKNOWN
            # Committing what this shard aborted would break atomicity.
            raise InternalError(f"commit of {txid}, which is {state} here", maybe_applied=False)
        self._release(txid, prepared)
        for key, value in prepared.writes:
            self._write(key, value)
        self._decide(txid, COMMITTED)
        return COMMITTED

    def _abort(self, txid: str) -> Any:
        if self.state_of(txid) == FORGOTTEN:
            return FORGOTTEN
        prepared = self.prepared.pop(txid, None)
        if prepared is not None:
            self._release(txid, prepared)
        elif self.decided.get(txid) == COMMITTED:
            raise InternalError(f"abort of {txid}, which is committed here", maybe_applied=False)
        if self.decided.get(txid) != ABORTED:
            self._decide(txid, ABORTED)
        return ABORTED

    def _three_phase_state(self, txid: str) -> tuple[str, Round]:
        prepared = self.prepared.get(txid)
        if prepared is not None:
            return prepared.phase, prepared.promised
        state = self.state_of(txid)
        if state is None:  # never prepared here: fenced, exactly like a NO vote
            self._decide(txid, ABORTED)
            state = ABORTED
        return state, COORDINATOR_ROUND

    def _join(self, txid: str, round_: Round) -> tuple[str, Round]:
        prepared = self.prepared.get(txid)
        if prepared is not None and round_ > prepared.promised:
            self.prepared[txid] = replace(prepared, promised=round_)
        return self._three_phase_state(txid)

    def _move(self, txid: str, round_: Round, target: str) -> tuple[str, Round]:
        prepared = self.prepared.get(txid)
        if prepared is not None and prepared.phase == WAITING and round_ >= prepared.promised:
            self.prepared[txid] = replace(prepared, phase=target, promised=round_)
        return self._three_phase_state(txid)

    def _commit_one(self, txid: str, reads: Reads, writes: Writes) -> Any:
        state = self.state_of(txid)
        if state == COMMITTED:
            return COMMITTED
        if state == FORGOTTEN:  # it may have committed here, long ago: neither "committed" nor a conflict
            raise CommitUnknown(f"{txid} is older than anything this shard remembers: forgotten", txid=txid)
        if state is not None:
            raise Conflict(f"{txid} is already {state} here", txid=txid)
        reason = self._conflict(txid, reads, writes)
        if reason is not None:
            self._decide(txid, ABORTED)
            raise Conflict(reason, txid=txid)
        for key, value in writes:
            self._write(key, value)
        self._decide(txid, COMMITTED)
        return COMMITTED
