"""Three-Phase Commit (`3pc`, `3pc-quorum`) against real node processes.

Bank transfers and aborts, the per-transaction costs measured from the nodes'
traces, the coordinator killed (kill -9) at each of its three hold points,
and bad input to the participants' `3pc.join` / `3pc.move`.

One module-scoped cluster serves every test: a test that kills the
coordinator node restarts it before it ends (a restart also disarms its
hold points), and every test uses keys of its own.
"""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import pytest
import trio

import commit
from commit.config import shard_group
from commit.tooling.localcluster import LocalCluster
from commit.protocols.registry import PROTOCOLS
from commit.routing import keys_on_each_shard
from commit.txids import new_txid
from consensus.errors import ClusterError, InvalidRequest, NotLeader
from consensus.rpc import RpcClient, open_rpc_client
from tests.bank import run_bank
from tests.conftest import _started

pytestmark = pytest.mark.cluster

THREE = ["3pc", "3pc-quorum"]
COORDINATOR = "n1"
WAIT_S = 0.5
STAGGER_S = 0.3
OPTIONS = {
    "transactions": {
        "fault_hooks": True,
        "twopc_coordinator": COORDINATOR,
        "three_phase_wait_s": WAIT_S,
        "three_phase_stagger_s": STAGGER_S,
        "vote_timeout_s": 1.0,
        "decision_resend_s": 2.0,  # no DoCommit resend muddies the message counts
    }
}


@pytest.fixture(scope="module")
def three_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from _started(tmp_path_factory.mktemp("three-phase"), options=OPTIONS)


def keys_by_shard(count_per_shard: int, prefix: str) -> dict[int, list[str]]:
    return dict(enumerate(keys_on_each_shard(prefix, count_per_shard, 3)))


def node_log(cluster: LocalCluster, node_id: str) -> str:
    path = cluster.config.node_dir(node_id) / "node.log"
    return path.read_text(errors="replace") if path.exists() else ""


def log_lines(cluster: LocalCluster, txid: str) -> list[str]:
    """Every node's log lines that mention txid (the node id is in each line)."""
    return [line for n in cluster.node_ids for line in node_log(cluster, n).splitlines() if txid in line]


def termination_lines(cluster: LocalCluster) -> list[str]:
    """Log lines of participants that acted because their coordinator went quiet (commit.termination)."""
    return [line for n in cluster.node_ids for line in node_log(cluster, n).splitlines()
            if "commit.termination" in line]


async def wait_for_hold(cluster: LocalCluster, txid: str, point: str, within_s: float = 10) -> None:
    """Until the coordinator logged that it froze txid at ``point`` (commit.coordinating.FaultHooks).

    Polled often: the participants' quiet period runs meanwhile.
    """
    line = f"HOLD {txid} at {point}"
    with trio.move_on_after(within_s):
        while line not in node_log(cluster, COORDINATOR):
            await trio.sleep(0.01)
        return
    raise AssertionError(f"the coordinator did not hold {txid} at {point} within {within_s}s")


async def restart_coordinator(cluster: LocalCluster) -> None:
    if not cluster.alive(COORDINATOR):
        cluster.start(COORDINATOR)
    await cluster.wait_ready()


async def inspect(cluster: LocalCluster, txid: str, shards: list[str]) -> dict[str, tuple[Any, ...]]:
    """Each participant's (state, 3pc phase, promised round) for txid, read without fencing (shard.inspect)."""
    leaders = await cluster.leaders()
    found = {}
    for s in shards:
        reply = await cluster.call(leaders[s], "shard.inspect", {"txid": txid, "shard": s})
        found[s] = (reply["state"], reply["phase"], reply["promised"])
    return found


async def shard_states(cluster: LocalCluster, txid: str, shards: list[str]) -> dict[str, str]:
    """Each participant's own record of txid, asked of its current leader (shard.query).

    The query is a Raft command, so an election under it (a node was just restarted) discards it; it is
    asked again of the new leader, as the client's ``status`` does.
    """

    async def asked() -> dict[str, str] | None:
        leaders = await cluster.leaders()
        try:
            return {s: (await cluster.call(leaders[s], "shard.query", {"txid": txid, "shard": s}))["state"]
                    for s in shards}
        except (ClusterError, KeyError):
            return None  # no leader just now, or it lost leadership under the query

    states = await cluster.wait_until(asked, 10, f"the participants of {txid} to answer shard.query")
    assert states is not None, f"no participant leader answered shard.query for {txid} within 10 s"
    return states


# -- 1. transfers keep the total; aborts leave nothing ------------------------------------------


@pytest.mark.parametrize("protocol", THREE)
async def test_bank_transfers_keep_the_total(three_cluster: LocalCluster, protocol: str, seed: int) -> None:
    cluster = three_cluster
    accounts = [k for keys in keys_by_shard(2, f"bank-{protocol}-").values() for k in keys]
    total = 100 * len(accounts)
    quiet_before = termination_lines(cluster)
    started = trio.current_time()
    async with commit.connect(cluster.config) as db:
        run = await run_bank(db, accounts, protocol, random.Random(seed), clients=6, transfers_each=12,
                             audits=8, start_balance=100)
    elapsed = trio.current_time() - started
    counts = (await cluster.call(COORDINATOR, "node.status", {}))["transactions"].get(protocol)
    # participants that gave up on a live (merely slow) coordinator: allowed, but worth seeing
    quiet = termination_lines(cluster)[len(quiet_before):]
    print(f"{protocol}: {run.transfers} transfers + {len(run.audits)} audits in {elapsed:.2f}s; "
          f"coordinator outcomes {counts}; {len(quiet)} participant timeouts" + "".join(f"\n  {q}" for q in quiet))
    assert run.transfers == 6 * 12
    assert sum(run.balances) == total, run.balances
    assert run.audits and all(a == total for a in run.audits), run.audits
    await cluster.wait_unlocked(within_s=10)


@pytest.mark.parametrize("protocol", THREE)
async def test_aborted_transactions_leave_no_value_and_no_lock(three_cluster: LocalCluster, protocol: str) -> None:
    by_shard = keys_by_shard(1, f"abort-{protocol}-")
    a, b = by_shard[0][0], by_shard[1][0]
    async with commit.connect(three_cluster.config) as db:
        # A NO vote: b's read is stale by the time the transaction prepares; a's shard votes yes.
        await db.put(b, "v1")
        tx = commit.Transaction(db, protocol)
        tx.put(a, "half")
        await tx.get(b)
        tx.put(b, "half")
        await db.put(b, "v2")
        with pytest.raises(commit.Conflict, match="stale"):
            await tx.commit()
        assert tx.txid is not None and tx.txid.startswith(f"{protocol}:")
        assert await db.status(tx.txid) == "aborted"
        assert await db.status(tx.txid, participants=tx.participants) == "aborted"
        assert (await db.get(a)).exists is False
        assert (await db.get(b)).value == "v2"
        await three_cluster.wait_unlocked(within_s=10)
        assert await shard_states(three_cluster, tx.txid, list(tx.participants)) == {
            s: "aborted" for s in tx.participants
        }


# -- 2. costs of one committed transaction, from the traces ---------------------------------------


def expected_costs(n: int) -> dict[str, int]:
    """The registry's formula: CanCommit, vote, PreCommit, ack, DoCommit per participant; prepare and
    precommit forced at each shard, nothing at the coordinator; delays: commit request 1, CanCommit 2,
    vote 3, PreCommit 4, ack 5, DoCommit 6."""
    costs = PROTOCOLS["3pc"].costs(n, 1)
    return {"messages": costs.messages, "forced_writes": costs.forced_writes, "message_delays": costs.message_delays}


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("protocol", THREE)
async def test_messages_and_forced_writes_match_the_formulas(three_cluster: LocalCluster, protocol: str,
                                                              n: int) -> None:
    keys = [shard_keys[0] for shard_keys in keys_by_shard(1, f"cost-{protocol}-{n}-").values()][:n]
    async with commit.connect(three_cluster.config) as db:
        started = trio.current_time()
        async with db.transaction(protocol) as tx:
            for key in keys:
                tx.put(key, n)
        latency = trio.current_time() - started
        assert tx.txid is not None and tx.txid.startswith(f"{protocol}:")
        summary = await three_cluster.settled_trace(tx.txid)
        assert [(await db.get(k)).value for k in keys] == [n] * n
    print(f"{protocol} N={n}: commit {latency * 1000:.1f} ms; {summary}")
    measured = {k: summary[k] for k in ("messages", "forced_writes", "message_delays")}
    assert measured == expected_costs(n), summary
    assert summary["messages_by_type"] == {k: n for k in ("prepare", "vote", "precommit", "ack", "commit")}
    assert summary["forced_writes_by_type"] == {"shard prepare": n, "shard precommitted": n}


# -- 6. bad input to 3pc.join / 3pc.move ------------------------------------------------------------


@asynccontextmanager
async def connection(cluster: LocalCluster, node_id: str) -> AsyncIterator[RpcClient]:
    """One RPC connection to one node, as the 3pc coordinator node, so that many calls fit in a quiet period."""
    node = cluster.config.node(node_id)
    async with open_rpc_client(node.host, node.rpc_port, settings=cluster.config.rpc_settings(COORDINATOR),
                               expect_node=node_id) as conn:
        yield conn


def bad_requests(txid: str, shard: str) -> list[tuple[str, dict[str, Any], str]]:
    """(method, params, a regex the error message must match): every one must be refused as invalid."""
    join = {"txid": txid, "shard": shard, "round": [1, 1], "leader": COORDINATOR}
    move = {**join, "target": "precommitted"}
    other = "2pc:" + txid.split(":")[1]
    cases: list[tuple[str, dict[str, Any], str]] = []
    for method, base in (("3pc.join", join), ("3pc.move", move)):
        rounds: list[Any] = [None, 5, "1,1", [1], [1, 1, 1], [-1, 0], [0, -1], [True, 0], [1, False],
                             [1.0, 0], ["1", "0"], [2**31, 0], {"0": 1}, [None, None]]
        for round_ in rounds:
            params = dict(base, round=round_)
            if round_ is None:
                del params["round"]
            cases.append((method, params, "round must be"))
        cases.append((method, dict(base, txid=other), "not a message of 2pc transactions"))
        cases.append((method, dict(base, txid="3pc:nothex"), "malformed txid"))
        cases.append((method, dict(base, txid=7), "malformed txid"))
        cases.append((method, dict(base, shard="shard-99"), "unknown shard"))
        cases.append((method, dict(base, leader="n9"), "leader must be"))
        cases.append((method, dict(base, hop=True), "hop must be"))
        cases.append((method, dict(base, hop=0), "hop must be"))
    for target in (None, "waiting", "committed", "aborted", 1, True, ["precommitted"]):
        params = dict(move, target=target)
        if target is None:
            del params["target"]
        cases.append(("3pc.move", params, "target must be"))
    return cases


async def expect_all_refused(conn: RpcClient, cases: list[tuple[str, dict[str, Any], str]]) -> list[str]:
    problems = []
    for method, params, pattern in cases:
        try:
            reply = await conn.call(method, params)
        except InvalidRequest as exc:
            if not re.search(pattern, exc.message):
                problems.append(f"{method} {params}: unclear message {exc.message!r} (expected /{pattern}/)")
            continue
        except ClusterError as exc:
            problems.append(f"{method} {params}: {type(exc).__name__} {exc.message!r}, not invalid_request")
            continue
        problems.append(f"{method} {params}: accepted, answered {reply}")
    return problems


async def shard_row(cluster: LocalCluster, node_id: str, shard: str) -> dict[str, Any]:
    rows = (await cluster.call(node_id, "node.status", {}))["groups"]
    row = next(r for r in rows if r["group"] == shard)
    return {k: row[k] for k in ("role", "keys", "prepared", "locks")}


async def test_bad_join_and_move_are_refused_and_change_nothing(three_cluster: LocalCluster) -> None:
    cluster = three_cluster
    await cluster.wait_unlocked(within_s=10)
    shard = shard_group(2)  # the last of three participants: its quiet period is the longest
    participants = [shard_group(0), shard_group(1), shard]
    key = keys_by_shard(1, "bad-input-")[2][0]
    leader = (await cluster.leaders())[shard]
    follower = next(n for n in cluster.node_ids if n != leader)
    txid = new_txid("3pc", participants)
    cases = bad_requests(txid, shard)
    before = await shard_row(cluster, leader, shard)
    assert before["role"] == "leader" and before["prepared"] == 0 and before["locks"] == 0, before

    async with connection(cluster, leader) as conn:
        # txid unknown everywhere: nothing may be recorded for it, not even a fence
        problems = await expect_all_refused(conn, cases)
        assert not problems, "\n".join(problems)
        assert await shard_row(cluster, leader, shard) == before
        assert await conn.call("shard.inspect", {"txid": txid, "shard": shard}) == {
            "state": "unknown", "phase": None, "promised": None}

        async with connection(cluster, follower) as other:
            for method, extra in (("3pc.join", {}), ("3pc.move", {"target": "precommitted"})):
                with pytest.raises(NotLeader) as info:
                    await other.call(method, {"txid": txid, "shard": shard, "round": [1, 1],
                                              "leader": COORDINATOR, **extra})
                assert info.value.leader == leader, info.value.detail
                assert shard in info.value.message, info.value.message

        # Now txid is prepared (waiting) here: bad requests must leave it exactly so. All of this has to
        # happen within the participant's quiet period, after which it aborts on its own.
        prepared_at = trio.current_time()
        vote = await conn.call("shard.prepare", {
            "txid": txid, "shard": shard, "reads": [], "writes": [[key, msgpack.packb("never")]],
            "participants": participants, "leader": COORDINATOR,
        })
        assert vote == {"vote": "yes"}, f"{txid} was fenced by a refused request: {vote}"
        problems = await expect_all_refused(conn, cases)
        state = await conn.call("shard.inspect", {"txid": txid, "shard": shard})
        within = trio.current_time() - prepared_at
    print(f"{len(cases)} bad requests twice; {within * 1000:.0f} ms from prepare to the last check: {state}")
    assert not problems, "\n".join(problems)
    assert within < WAIT_S, f"too slow to check within the quiet period: {within:.2f}s"
    assert state == {"state": "prepared", "phase": "waiting", "promised": [0, 0]}, state
    during = await shard_row(cluster, leader, shard)
    assert (during["prepared"], during["locks"]) == (1, 1), during

    # Untouched, it is a plain 3pc participant still waiting whose coordinator never spoke: it aborts alone.
    await cluster.wait_unlocked(within_s=10)
    print(f"the prepared participant aborted on its own {trio.current_time() - prepared_at:.2f}s after prepare")
    assert await shard_states(cluster, txid, [shard]) == {shard: "aborted"}
    async with commit.connect(cluster.config) as db:
        assert (await db.get(key)).exists is False
    assert any("aborted on its own" in line for line in log_lines(cluster, txid)), log_lines(cluster, txid)


# -- 3-5. the coordinator killed at each hold point ----------------------------------------------


async def held_transaction(
    cluster: LocalCluster, db: commit.Database, protocol: str, point: str, keys: list[str], nursery: trio.Nursery
) -> commit.Transaction:
    """Like ``LocalCluster.start_held_transfer`` for any number of shards: keys[0] (100) sends 30 to each
    other key (0); returns once every participant prepared."""
    for i, key in enumerate(keys):
        await db.put(key, 100 if i == 0 else 0)
    await cluster.hold(COORDINATOR, point)
    tx = commit.Transaction(db, protocol)
    tx.put(keys[0], (await tx.get(keys[0])).value - 30 * (len(keys) - 1))
    for key in keys[1:]:
        tx.put(key, (await tx.get(key)).value + 30)

    async def commit_and_ignore() -> None:
        try:
            await tx.commit()
        except ClusterError:
            pass  # the coordinator dies under it: the outcome is judged from the shards

    nursery.start_soon(commit_and_ignore)
    shards = [shard_group(i) for i in range(len(keys))]

    async def prepared() -> bool:
        rows = await cluster.shard_leader_rows()
        return all(rows.get(s, {}).get("prepared", 0) >= 1 for s in shards)

    await cluster.wait_until(prepared, 10, "every participant to be prepared")
    return tx


def expected_values(outcome: str, n: int) -> list[int]:
    return [100 - 30 * (n - 1)] + [30] * (n - 1) if outcome == "committed" else [100] + [0] * (n - 1)


async def kill_coordinator_at(
    cluster: LocalCluster, db: commit.Database, protocol: str, point: str, prefix: str, n: int = 2
) -> tuple[commit.Transaction, list[str], float, dict[str, tuple[Any, ...]]]:
    """An n-shard transfer whose coordinator is kill -9'd at ``point``.

    Returns the transaction, its keys (one per shard, in shard order), the time of the kill and what each
    participant held at the hold point (state, phase, promised), read just before the kill.
    """
    await cluster.wait_unlocked(within_s=10)
    keys = [shard_keys[0] for shard_keys in keys_by_shard(1, f"{prefix}-{protocol}-{n}-").values()][:n]
    async with trio.open_nursery() as committer:
        if n == 2:
            tx = await cluster.start_held_transfer(db, protocol, point, keys[0], keys[1], committer)
        else:
            tx = await held_transaction(cluster, db, protocol, point, keys, committer)
        assert tx.txid is not None
        await wait_for_hold(cluster, tx.txid, point)
        at_hold = await inspect(cluster, tx.txid, list(tx.participants))
        cluster.kill(COORDINATOR)
        killed = trio.current_time()
        committer.cancel_scope.cancel()
    print(f"{protocol} at {point}: participants {at_hold} when the coordinator was killed")
    return tx, keys, killed, at_hold


async def wait_unlocked_since(cluster: LocalCluster, since: float, within_s: float) -> float:
    try:
        await cluster.wait_unlocked(within_s=within_s)
    except AssertionError:
        rows = await cluster.shard_leader_rows()
        raise AssertionError(f"locks still held {trio.current_time() - since:.1f}s after the kill: "
                             f"{ {g: (r['prepared'], r['locks']) for g, r in rows.items()} }") from None
    return trio.current_time() - since


@pytest.mark.parametrize(("point", "phase", "outcome"), [
    ("coordinator.after_votes", "waiting", "aborted"),  # before any PreCommit: nobody can have committed
    ("coordinator.after_decision", "precommitted", "committed"),  # every PreCommit acknowledged
])
@pytest.mark.parametrize("protocol", THREE)
async def test_participants_finish_without_a_killed_coordinator(
    three_cluster: LocalCluster, protocol: str, point: str, phase: str, outcome: str
) -> None:
    cluster = three_cluster
    try:
        async with commit.connect(cluster.config) as db:
            tx, keys, killed, at_hold = await kill_coordinator_at(cluster, db, protocol, point, point)
            assert tx.txid is not None
            shards = list(tx.participants)
            assert at_hold == {s: ("prepared", phase, [0, 0]) for s in shards}, at_hold
            try:
                elapsed = await wait_unlocked_since(cluster, killed, within_s=10)
            finally:
                print("\n".join(log_lines(cluster, tx.txid)))
            print(f"{protocol}: coordinator killed at {point}; locks gone {elapsed:.2f}s after the kill")
            assert await shard_states(cluster, tx.txid, shards) == {s: outcome for s in shards}
            assert [(await db.get(k)).value for k in keys] == expected_values(outcome, 2)
            assert elapsed < 5, elapsed
            lines = log_lines(cluster, tx.txid)
            if protocol == "3pc" and phase == "waiting":  # never joined a termination: each aborts alone
                assert sum("aborted on its own" in line for line in lines) == 2, lines
            else:  # a terminator (the quorum variant never aborts alone)
                assert any("terminating at round" in line for line in lines), lines
            await restart_coordinator(cluster)
            by_participants = await db.status(tx.txid, participants=tx.participants)
            bare = await db.status(tx.txid)
            print(f"{protocol}: status {by_participants!r} with the participants, {bare!r} without")
            assert by_participants == outcome
    finally:
        await restart_coordinator(cluster)


@pytest.mark.parametrize(("n", "colocated"), [(2, False), (3, False), (2, True)],
                         ids=["2-apart", "3-apart", "2-coordinator-leads-the-precommitted-shard"])
@pytest.mark.parametrize("protocol", THREE)
async def test_coordinator_killed_after_one_precommit_terminates_consistently(
    three_cluster: LocalCluster, protocol: str, n: int, colocated: bool
) -> None:
    """colocated: the coordinator's node also leads shard-0, the one participant it precommitted, so the
    kill takes that participant's leader too: the waiting ones act before shard-0 has a new leader."""
    cluster = three_cluster
    try:
        if colocated:
            await cluster.place_leaders({shard_group(0): COORDINATOR})
        async with commit.connect(cluster.config) as db:
            tx, keys, killed, at_hold = await kill_coordinator_at(
                cluster, db, protocol, "coordinator.after_one_precommit", "one", n)
            assert tx.txid is not None
            shards = list(tx.participants)
            first, *rest = shards  # the coordinator sends PreCommit in sorted order
            assert at_hold == {first: ("prepared", "precommitted", [0, 0]),
                               **{s: ("prepared", "waiting", [0, 0]) for s in rest}}, at_hold
            try:
                elapsed = await wait_unlocked_since(cluster, killed, within_s=10)
            finally:
                print("\n".join(log_lines(cluster, tx.txid)))
            states = await shard_states(cluster, tx.txid, shards)
            values = [(await db.get(k)).value for k in keys]
            print(f"{protocol} N={n} {'co-located' if colocated else 'apart'}: coordinator killed after one "
                  f"PreCommit: {states}, values {values}, "
                  f"locks gone {elapsed:.2f}s after the kill")
            assert len(set(states.values())) == 1, f"participants disagree: {states}"
            outcome = states[first]
            assert outcome in ("committed", "aborted"), states
            assert values == expected_values(outcome, n)
            assert elapsed < 5, elapsed
            await restart_coordinator(cluster)
            assert await db.status(tx.txid, participants=tx.participants) == outcome
    finally:
        await restart_coordinator(cluster)


@pytest.mark.parametrize("protocol", THREE)
async def test_a_commit_is_not_sent_again_to_a_restarted_coordinator(three_cluster: LocalCluster,
                                                                      protocol: str) -> None:
    """A restarted 3PC coordinator remembers nothing; a resent txn.commit would start a second coordination
    of the same transaction (which can split it, see tests/test_sim_three_phase.py). The client must not
    resend once the first may have arrived: it reports CommitUnknown, and the participants decide alone."""
    cluster = three_cluster
    await cluster.wait_unlocked(within_s=10)
    src, dst = [shard_keys[0] for shard_keys in keys_by_shard(1, f"resend-{protocol}-").values()][:2]
    raised: list[BaseException] = []
    try:
        async with commit.connect(cluster.config) as db:
            await db.put(src, 100)
            await db.put(dst, 0)
            await cluster.hold(COORDINATOR, "coordinator.after_votes")
            tx = commit.Transaction(db, protocol)
            tx.put(src, 70)
            tx.put(dst, 30)

            async def committing() -> None:
                try:
                    await tx.commit()
                except ClusterError as exc:
                    raised.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(committing)
                await cluster.wait_until(lambda: _true_when(tx.txid is not None), 10, "the commit to start")
                assert tx.txid is not None
                await wait_for_hold(cluster, tx.txid, "coordinator.after_votes")
                cluster.kill(COORDINATOR)
                cluster.start(COORDINATOR)  # back at once, well within the client's deadline
            assert len(raised) == 1 and isinstance(raised[0], commit.CommitUnknown), raised
            await restart_coordinator(cluster)
            trace = await cluster.call(COORDINATOR, "node.trace", {"txid": tx.txid})
            assert trace["events"] == [], trace  # the restarted coordinator never heard of it
            await cluster.wait_unlocked(within_s=10)
            shards = list(tx.participants)
            assert await shard_states(cluster, tx.txid, shards) == {s: "aborted" for s in shards}
            assert await db.status(tx.txid, participants=tx.participants) == "aborted"
    finally:
        await restart_coordinator(cluster)


async def _true_when(condition: bool) -> bool:
    return condition
