"""The chaos harness on a real cluster, at CI size: real partitions (Raft included), runs per protocol, and
deliberately broken builds that the harness must catch (docs/RELIABILITY.md has the long runs).

Each run prints its seed; ``TEST_SEED=<seed>`` replays it (the seed fixes the faults, their victims and the
operations; the interleaving is the machine's). Partitions need iptables and root: without them the tests
that need partitions skip, saying why.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import trio

import commit
from chaos.network import NODE_HOSTS, firewall_missing, open_firewall
from chaos.runner import RunSpec, RunSummary, run_chaos
from commit.config import COORDINATOR_GROUP
from commit.tooling.localcluster import LocalCluster

pytestmark = pytest.mark.cluster
NO_FIREWALL = firewall_missing()
needs_firewall = pytest.mark.skipif(NO_FIREWALL is not None, reason=f"partitions need iptables: {NO_FIREWALL}")
SHORT = {"gap_s": (0.3, 0.8), "fault_s": (0.6, 1.5)}  # CI-sized faults: several within a few seconds
ELECTION_S = 10.0


def _failure(summary: RunSummary) -> str:
    return f"seed {summary.spec.seed}, kept in {summary.directory}:\n{summary.verdict.summary()}\n" \
           f"lost acknowledged writes: {summary.lost_acknowledged}"


@needs_firewall
def test_a_partition_cuts_raft_traffic_and_heals(tmp_path: Path) -> None:
    """Isolating the coordinator group's leader makes the other two elect another; a write then commits
    through the majority; after the heal the old leader follows the new one (it heard the higher term)."""
    hosts = list(NODE_HOSTS[:3])
    cluster = LocalCluster(tmp_path, shards=1, options={"hosts": hosts})
    cluster.start_all()

    async def leader_of(group: str, among: set[str]) -> str | None:
        leaders = await cluster.leaders()
        return leaders.get(group) if leaders.get(group) in among else None

    async def scenario() -> None:
        await cluster.wait_ready()
        old = (await cluster.leaders())[COORDINATOR_GROUP]
        others = {n for n in cluster.node_ids if n != old}
        with open_firewall("chaos-test-cut") as firewall:
            firewall.cut([(cluster.config.node(old).host, cluster.config.node(n).host) for n in others])
            with trio.fail_after(ELECTION_S):
                while (new := await leader_of(COORDINATOR_GROUP, others)) is None:
                    await trio.sleep(0.2)
            async with commit.connect(cluster.config) as db:
                async def txn(tx: commit.Transaction) -> None:
                    tx.put("x", 1)
                await db.run(txn, protocol="paxos-commit")
            firewall.heal()
            with trio.fail_after(ELECTION_S):
                while True:  # the old leader rejoins: it no longer calls itself leader of the group
                    rows = [r for r in await cluster.status() if r.get("node") == old and
                            r.get("group") == COORDINATOR_GROUP and r.get("reachable")]
                    if rows and rows[0].get("role") != "leader":
                        break
                    await trio.sleep(0.2)
        assert new != old

    try:
        trio.run(scenario)
    finally:
        cluster.stop()


@needs_firewall
@pytest.mark.parametrize("protocol", ["raft-2pc", "paxos-commit", "fast-paxos-commit", "2pc", "3pc-quorum"])
def test_short_chaos_run_finds_nothing(protocol: str, seed: int) -> None:
    """Bank and list-append together, with kills, pauses and Raft-level partitions (2pc's coordinator spared
    from kills and pauses): no anomaly, no acknowledged write lost."""
    with tempfile.TemporaryDirectory(prefix="chaos-") as out:
        summary = run_chaos(RunSpec(protocol, "bank+list-append", ("kill", "pause", "partition"), 3.0, seed,
                                    **SHORT), Path(out))
        assert summary.ops["ok"] > 20, summary.ops
        assert summary.valid, _failure(summary)
        assert summary.windows, "the nemesis struck nothing"


# A read that skips the lock shows while a transaction is acknowledged and its decision has not reached a
# shard yet: decision messages lost for a while (each resent, and lost again, until the heal). Deciding on F
# votes shows only where the leader decides from partial acceptances (the acceptors reveal "prepared" only
# once every participant's vote is in), which contention makes happen within seconds, not at once.
MUTANTS = [("skip-prepare-persist", "list-append", (), 3.0), ("decide-on-f-votes", "bank", (), 8.0),
           ("read-skips-lock", "list-append", ("drop-decisions",), 3.0)]


@pytest.mark.parametrize("mutant,workload,nemeses,seconds", MUTANTS)
def test_a_broken_build_makes_the_harness_fail(mutant: str, workload: str, nemeses: tuple[str, ...], seconds: float,
                                               seed: int) -> None:
    """Each deliberately broken build (commit.protocols.mutants) is caught: the harness reports an anomaly or
    a lost write. A fault a run happens not to expose is tried again with the next seed, a few times."""
    tries = []
    for attempt in range(3):
        with tempfile.TemporaryDirectory(prefix="chaos-") as out:
            summary = run_chaos(RunSpec("paxos-commit", workload, nemeses, seconds, seed + attempt, clients=12,
                                        accounts=4, mutant=mutant, **SHORT), Path(out))
        tries.append((summary.spec.seed, summary.verdict.counts(), summary.lost_acknowledged))
        if not summary.valid:
            return
    pytest.fail(f"the {mutant} build passed the harness in every try: {tries}")
