"""The one client retry policy (commit.retry) and db.run's use of it, on trio's MockClock.

The database here is a script of replies, not a cluster: what is under test is the client's own
decision logic (when to retry, when to ask for a status, what to raise), which needs no nodes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from commit.config import COORDINATOR_GROUP, Timeouts, load_config
from commit.errors import CommitUnknown, Conflict
from commit.retry import RetryPolicy
from commit.routing import shard_of
from commit.transaction import Transaction, run
from commit.values import Versioned, pack_value
from consensus.errors import ClusterError, InvalidRequest, NotLeader, Timeout, Unavailable

ROOT = Path(__file__).resolve().parent.parent
TIMEOUTS = Timeouts(client_deadline_s=10.0, backoff_initial_s=0.1, backoff_max_s=0.4)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def _policy(max_attempts: int | None = None) -> RetryPolicy:
    return RetryPolicy.starting_now("op", TIMEOUTS, max_attempts=max_attempts)


async def test_a_retryable_error_backs_off_within_the_growing_cap(clock: trio.testing.MockClock) -> None:
    policy = _policy()
    for n in range(5):
        policy.start_attempt()
        before = trio.current_time()
        await policy.on_error(Unavailable("no leader"))
        assert 0 <= trio.current_time() - before <= min(TIMEOUTS.backoff_max_s, TIMEOUTS.backoff_initial_s * 2**n)


async def test_a_redirect_is_tried_at_once(clock: trio.testing.MockClock) -> None:
    policy = _policy()
    policy.start_attempt()
    before = trio.current_time()
    await policy.on_error(NotLeader("not me", leader="n2"), backoff=False)
    assert trio.current_time() == before and policy.backoffs == 0


@pytest.mark.parametrize("error", [InvalidRequest("bad"), CommitUnknown("maybe", txid="t")])
async def test_an_error_that_is_not_retryable_is_raised_as_it_is(clock: trio.testing.MockClock,
                                                                 error: ClusterError) -> None:
    policy = _policy()
    policy.start_attempt()
    with pytest.raises(type(error)) as raised:
        await policy.on_error(error)
    assert raised.value is error


async def test_past_the_deadline_it_gives_up_saying_nothing_was_applied(clock: trio.testing.MockClock) -> None:
    policy = _policy()
    policy.start_attempt()
    await policy.on_error(Unavailable("no leader", maybe_applied=False))
    clock.jump(TIMEOUTS.client_deadline_s)
    with pytest.raises(Unavailable, match="op gave up after 1 attempts: .*no leader") as raised:
        policy.start_attempt()
    assert not raised.value.maybe_applied


async def test_once_an_attempt_may_have_applied_giving_up_says_so(clock: trio.testing.MockClock) -> None:
    policy = _policy()
    policy.start_attempt()
    await policy.on_error(Timeout("no answer"))  # a Timeout may have been applied
    policy.start_attempt()
    await policy.on_error(Unavailable("no leader"))
    clock.jump(TIMEOUTS.client_deadline_s)
    with pytest.raises(Timeout) as raised:
        policy.start_attempt()
    assert raised.value.maybe_applied


async def test_a_caller_that_knows_nothing_was_applied_overrides_the_error(clock: trio.testing.MockClock) -> None:
    policy = _policy(max_attempts=1)
    policy.start_attempt()
    with pytest.raises(Unavailable) as raised:
        await policy.on_error(Timeout("a read timed out"), may_have_applied=False)
    assert not raised.value.maybe_applied


async def test_the_attempt_limit_ends_the_retries(clock: trio.testing.MockClock) -> None:
    policy = _policy(max_attempts=3)
    for _ in range(2):
        policy.start_attempt()
        await policy.on_error(Conflict("stale read"))
    policy.start_attempt()
    with pytest.raises(Unavailable, match="after 3 attempts"):
        await policy.on_error(Conflict("stale read"))


# -- db.run -------------------------------------------------------------------------


class ScriptedDatabase:
    """Answers reads with one value, and each multi-shard commit with the next item of ``commits``."""

    def __init__(self, commits: list[ClusterError | None], statuses: dict[int, list[str]]) -> None:
        config = load_config(ROOT / "cluster.toml")
        self.config = dataclasses.replace(config, timeouts=TIMEOUTS)
        self.commits = commits
        self.statuses = statuses  # attempt number -> the answers to its status questions
        self.txids: list[str] = []
        self.asked: list[tuple[str, tuple[str, ...]]] = []

    async def read_for_commit(self, key: bytes) -> Versioned:
        return Versioned(100, 1, True)

    def checked_value(self, value: Any) -> bytes:
        return pack_value(value)

    async def call_group(self, group: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert (group, method) == (COORDINATOR_GROUP, "txn.commit")
        self.txids.append(params["txid"])
        error = self.commits.pop(0)
        if error is not None:
            raise error
        return {"outcome": "committed"}

    async def status(self, txid: str, participants: tuple[str, ...] = ()) -> str:
        self.asked.append((txid, participants))
        answers = self.statuses[self.txids.index(txid)]
        return answers.pop(0) if len(answers) > 1 else answers[0]


def _keys_on_two_shards(shard_count: int) -> tuple[str, str]:
    by_shard = {shard_of(f"k{i}".encode(), shard_count): f"k{i}" for i in range(100)}
    return by_shard[0], by_shard[1]


KEYS = _keys_on_two_shards(load_config(ROOT / "cluster.toml").shard_count)


async def _transfer(tx: Transaction) -> str:
    for key in KEYS:  # a two-participant commit, through the coordinator
        tx.put(key, (await tx.get(key)).value - 1)
    return "done"


async def test_only_the_attempt_that_may_have_committed_is_asked_about(clock: trio.testing.MockClock) -> None:
    db = ScriptedDatabase([Conflict("stale"), Timeout("no answer"), None], {1: ["pending", "aborted"]})
    assert await run(db, _transfer, protocol="raft-2pc") == "done"  # type: ignore[arg-type]
    assert len(set(db.txids)) == 3, "each attempt has a txid of its own"
    assert {txid for txid, _ in db.asked} == {db.txids[1]}, "only the uncertain attempt is asked about"
    assert all(participants == ("shard-0", "shard-1") for _, participants in db.asked)


async def test_an_attempt_found_committed_is_not_run_again(clock: trio.testing.MockClock) -> None:
    db = ScriptedDatabase([Timeout("no answer")], {0: ["committed"]})
    assert await run(db, _transfer, protocol="raft-2pc") == "done"  # type: ignore[arg-type]
    assert len(db.txids) == 1 and [txid for txid, _ in db.asked] == db.txids


async def test_an_attempt_still_in_doubt_is_raised_not_retried(clock: trio.testing.MockClock) -> None:
    db = ScriptedDatabase([Timeout("no answer")], {0: ["pending"]})
    with pytest.raises(CommitUnknown) as raised:
        await run(db, _transfer, protocol="raft-2pc")  # type: ignore[arg-type]
    assert raised.value.txid == db.txids[0] and len(db.txids) == 1


async def test_conflicts_to_the_limit_give_up_saying_nothing_committed(clock: trio.testing.MockClock) -> None:
    db = ScriptedDatabase([Conflict("stale")] * 5, {})
    db.config = dataclasses.replace(db.config, transactions=dataclasses.replace(db.config.transactions,
                                                                                retry_limit=5))
    with pytest.raises(Unavailable, match="transaction gave up after 5 attempts") as raised:
        await run(db, _transfer, protocol="raft-2pc")  # type: ignore[arg-type]
    assert not raised.value.maybe_applied and db.asked == []
