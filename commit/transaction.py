"""Client transactions: buffered writes, versioned reads, and the retry loop.

    async with db.transaction() as tx:          # commits on a clean exit, aborts on an exception
        balance = (await tx.get("alice")).value
        tx.put("alice", balance - 10)

    await db.run(transfer, "alice", "bob", 10)  # retried on Conflict, FoundationDB style

    @commit.transactional
    async def transfer(tx, src, dst, amount): ...
    await transfer(db, "alice", "bob", 10)      # a Database: runs the retry loop
    await transfer(tx, "alice", "bob", 10)      # a Transaction: joins it

Reads go to the shard leaders as they happen (linearizable, and never the
half of another transaction: a read that meets a prepared writer waits for,
or resolves, its outcome) and remember the version they saw. Writes stay in
the client until commit. At commit, the shards touched are the participants:

* one shard: one-phase commit, ONE replicated command at that shard that
  validates the read versions and applies the writes;
* several shards: the chosen protocol's coordinator runs Two-Phase Commit;
  each shard's PREPARE validates the reads and takes the locks in one
  replicated command.

A commit ends in success, ``Conflict`` (nothing was committed: retry; its
message says which shard voted no, and why), or ``CommitUnknown`` (it may
have been: ``await db.status(exc.txid, exc.participants)``). ``run``
resolves ``CommitUnknown`` itself by asking for the status, so a body is
never committed twice.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import trio

from commit.config import COORDINATOR_GROUP, shard_group
from commit.outcomes import ABORTED, COMMITTED, FORGOTTEN, PENDING
from commit.errors import CommitUnknown, Conflict
from commit.protocols.registry import PROTOCOLS, Coordinator
from commit.retry import RetryPolicy
from commit.routing import Key, key_bytes, shard_of
from commit.txids import new_txid
from commit.values import Versioned, unpack_value
from consensus.errors import ClusterError, InvalidRequest, Timeout, Unavailable

if TYPE_CHECKING:
    from commit.client import Database

P = ParamSpec("P")
R = TypeVar("R")

class Transaction:
    def __init__(self, db: Database, protocol: str | None = None) -> None:
        protocol = protocol or db.config.transactions.default_protocol
        if protocol not in PROTOCOLS:
            raise InvalidRequest(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        self.db = db
        self.protocol = protocol
        self.txid: str | None = None
        self.participants: tuple[str, ...] = ()
        self._reads: dict[bytes, Versioned] = {}
        self._writes: dict[bytes, bytes | None] = {}
        self._state = "open"

    @property
    def state(self) -> str:
        return self._state

    def _key(self, key: Key) -> bytes:
        return key_bytes(key, self.db.config.limits.max_key_bytes)

    def _check_open(self) -> None:
        if self._state != "open":
            raise InvalidRequest(f"this transaction is already {self._state}")

    async def get(self, key: Key) -> Versioned:
        self._check_open()
        raw = self._key(key)
        if raw in self._writes:
            packed = self._writes[raw]
            return Versioned(unpack_value(packed), -1, packed is not None)
        if raw not in self._reads:
            self._reads[raw] = await self.db.read_for_commit(raw)
        return self._reads[raw]

    def put(self, key: Key, value: Any) -> None:
        self._check_open()
        self._writes[self._key(key)] = self.db.checked_value(value)

    def delete(self, key: Key) -> None:
        self._check_open()
        self._writes[self._key(key)] = None

    async def abort(self) -> None:
        """Nothing to undo remotely: locks are only taken at commit."""
        if self._state == "open":
            self._state = "aborted"

    def _participants(self) -> dict[str, dict[str, list[Any]]]:
        shards: dict[str, dict[str, list[Any]]] = {}
        count = self.db.config.shard_count

        def slot(key: bytes) -> dict[str, list[Any]]:
            return shards.setdefault(shard_group(shard_of(key, count)), {"reads": [], "writes": []})

        for key, seen in self._reads.items():
            slot(key)["reads"].append([key, seen.version])
        for key, value in self._writes.items():
            slot(key)["writes"].append([key, value])
        return shards

    async def commit(self) -> None:
        self._check_open()
        self._state = "committing"
        participants = self._participants()
        self.participants = tuple(sorted(participants))
        try:
            if not participants:
                self._state = "committed"
                return
            if len(participants) == 1:
                [(shard, payload)] = participants.items()
                self.txid = new_txid(self.protocol, shard=shard)
                await self._settle(self.db.call_group(
                    shard, "txn.commit_one", {"txid": self.txid, "shard": shard, **payload}))
            else:
                self.txid = new_txid(self.protocol, participants)
                params = {"txid": self.txid, "participants": participants}
                spec = PROTOCOLS[self.protocol]
                if spec.coordinator is Coordinator.NODE:
                    call = self.db.call_node(self.db.config.twopc_coordinator, "txn.commit", params,
                                             resend_maybe_applied=spec.resend_commit)
                else:
                    call = self.db.call_group(COORDINATOR_GROUP, "txn.commit", params)
                await self._settle(call)
            self._state = "committed"
        except BaseException:
            self._state = "failed"
            raise

    async def _settle(self, call: Awaitable[dict[str, Any]]) -> None:
        assert self.txid is not None
        try:
            await call
        except (Conflict, InvalidRequest):
            raise
        except ClusterError as exc:
            if isinstance(exc, CommitUnknown) or exc.maybe_applied:
                outcome = FORGOTTEN if isinstance(exc, CommitUnknown) and exc.forgotten else None
                raise CommitUnknown(f"{self.txid}: {exc.message}", txid=self.txid,
                                    participants=list(self.participants), outcome=outcome) from exc
            raise


async def _outcome(db: Database, txid: str, participants: tuple[str, ...], deadline: float) -> str:
    """Ask for txid's outcome until it is decided, or forgotten, or the deadline passes (then ``pending``)."""
    poll_s = db.config.timeouts.status_poll_s
    with trio.move_on_at(deadline):
        while True:
            try:
                outcome = await db.status(txid, participants)
                if outcome in (COMMITTED, ABORTED, FORGOTTEN):
                    return outcome
            except (Unavailable, Timeout):
                pass
            await trio.sleep(poll_s)
    return PENDING


async def run(db: Database, fn: Callable[..., Awaitable[R]], *args: Any, protocol: str | None = None) -> R:
    """Run ``fn(tx, *args)`` in a transaction and commit it, retrying under ``commit.retry``'s policy.

    Each attempt is a new ``Transaction``, so a new txid. Only an attempt whose commit said
    ``CommitUnknown`` is asked about, by its own txid and participants, and at least for
    ``timeouts.client_attempt_s`` even when the deadline is nearer: committed, the body's result is
    returned; aborted, it is retried; still pending, the ``CommitUnknown`` is raised (nothing else can
    say which it was), and forgotten, a ``CommitUnknown`` whose ``forgotten`` is true. Any other failure of an attempt committed nothing.
    """
    policy = RetryPolicy.starting_now("transaction", db.config.timeouts,
                                      max_attempts=db.config.transactions.retry_limit)
    while True:
        policy.start_attempt()
        tx = Transaction(db, protocol)
        try:
            result = await fn(tx, *args)
        except (Conflict, Unavailable, Timeout) as exc:
            await policy.on_error(exc, may_have_applied=False)
            continue
        failure = await _commit_settled(db, tx, policy.deadline)
        if failure is None:
            return result
        await policy.on_error(failure, may_have_applied=False)


async def _commit_settled(db: Database, tx: Transaction, deadline: float) -> ClusterError | None:
    """Commit ``tx``: None once committed, or why it did not (nothing committed); raises what is unsettled."""
    try:
        await tx.commit()
        return None
    except (Conflict, Unavailable, Timeout) as exc:
        return exc
    except CommitUnknown as exc:
        asking_until = max(deadline, trio.current_time() + db.config.timeouts.client_attempt_s)
        outcome = await _outcome(db, exc.txid, exc.participants, asking_until)
        if outcome == COMMITTED:
            return None
        if outcome == ABORTED:
            return Conflict(f"{exc.txid} was aborted (asked after: {exc.message})", txid=exc.txid)
        if outcome == FORGOTTEN or exc.forgotten:
            raise CommitUnknown(f"{exc.txid}: its outcome was forgotten (decided too long ago for anyone asked "
                                f"to remember which way; it was not presumed aborted): {exc.message}",
                                txid=exc.txid, participants=list(exc.participants), outcome=FORGOTTEN) from exc
        raise


def transactional(
    fn: Callable[Concatenate[Transaction, P], Awaitable[R]],
) -> Callable[Concatenate[Any, P], Awaitable[R]]:
    """Make ``fn(tx, ...)`` callable with a Database (runs the retry loop) or a Transaction (joins it)."""

    @functools.wraps(fn)
    async def wrapper(db_or_tx: Any, *args: P.args, **kwargs: P.kwargs) -> R:
        if isinstance(db_or_tx, Transaction):
            return await fn(db_or_tx, *args, **kwargs)
        return await run(db_or_tx, functools.partial(fn, **kwargs), *args)

    return wrapper
