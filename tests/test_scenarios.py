"""The demonstrations of ``python -m bench.scenarios``, each verdict asserted from the shards' real state.

Every scenario starts its own 4-node cluster (n1: the 2pc/3pc coordinator; n2-n4: replicas, one shard
leader each), injects its fault and reads back what every shard holds for the transaction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from bench.scenarios import AMOUNT, SCENARIOS, START_BALANCE, compare, open_stage, run_scenario

pytestmark = pytest.mark.cluster

PATIENCE_S = 3.0  # how long compare's 2pc crash run waits before it restarts the coordinator


def _run(name: str, root: Path) -> dict[str, Any]:
    result = trio.run(run_scenario, name, root, print)
    for run in result["runs"]:
        print({k: v for k, v in run.items() if k != "events"})
    return result


def _outcomes(run: dict[str, Any]) -> set[str]:
    return set(run["shards"].values())


def test_every_scenario_is_listed_with_a_description() -> None:
    assert set(SCENARIOS) == {"2pc-coordinator-crash", "3pc-unblocks", "3pc-partition",
                              "paxos-commit-coordinator-crash", "compare"}
    assert all(s.description for s in SCENARIOS.values())


def test_3pc_participants_finish_without_the_coordinator(tmp_path: Path) -> None:
    after_votes, after_precommit = _run("3pc-unblocks", tmp_path)["runs"]
    for run in (after_votes, after_precommit):
        assert not run["needed_coordinator_back"] and not run["split"] and not run["blocked"]
        assert run["decided_after_s"] is not None and run["decided_after_s"] < 6.0
    assert _outcomes(after_votes) == {"aborted"}
    assert after_votes["values"] == {"shard-0": START_BALANCE, "shard-1": START_BALANCE}
    assert _outcomes(after_precommit) == {"committed"}  # everyone precommitted: termination commits
    assert after_precommit["values"] == {"shard-0": START_BALANCE - AMOUNT, "shard-1": START_BALANCE + AMOUNT}
    assert any(e["kind"] == "state-request" for e in after_precommit["events"])


def test_compare_measures_every_protocol_side_by_side(tmp_path: Path) -> None:
    async def body() -> dict[str, Any]:
        async with open_stage(tmp_path, print) as stage:
            return await compare(stage, transactions=2, patience_s=PATIENCE_S, window_s=4.0)

    result = trio.run(body)
    rows = {r["protocol"]: r for r in result["rows"]}
    print(rows)
    n, f = 2, 1  # two participants, three acceptors
    expected = {  # (message delays, messages, forced writes), as docs/PROTOCOLS.md derives them
        "2pc": (4, 3 * n, n + 1),
        "raft-2pc": (4, 3 * n, n + 2),
        "3pc": (6, 5 * n, 2 * n),
        "3pc-quorum": (6, 5 * n, 2 * n),
        "paxos-commit": (5, n * (2 * f + 3) + 2 * f + 1, n + 2 * f + 1),
    }
    for protocol, costs in expected.items():
        assert (rows[protocol]["delays"], rows[protocol]["msgs"], rows[protocol]["forced"]) == costs, protocol
    assert rows["2pc"]["coordinator_crash"].startswith("blocked until restart")
    for protocol in ("raft-2pc", "3pc", "3pc-quorum", "paxos-commit"):
        assert "no restart" in rows[protocol]["coordinator_crash"], rows[protocol]
    assert rows["3pc"]["partition"].startswith("SPLIT")
    assert rows["3pc-quorum"]["partition"].startswith("no split")
    assert not any(r["split"] for r in result["runs"] if r["protocol"] != "3pc")
    # compare runs the scenarios 2pc-coordinator-crash, 3pc-partition and paxos-commit-coordinator-crash
    # (bench.scenarios: the same functions); their verdicts, from what every shard holds:
    crashes = {r["protocol"]: r for r in result["runs"] if r["fault"] == "coordinator.after_votes"}
    partitions = {r["protocol"]: r for r in result["runs"] if r["fault"] == "coordinator.after_one_precommit"}
    blocked = crashes["2pc"]
    assert blocked["needed_coordinator_back"], "2PC participants must not decide without their coordinator"
    assert blocked["locks_held_s"] >= PATIENCE_S  # the whole patience window, and then the restart
    assert _outcomes(blocked) == {"aborted"}  # nothing was logged: presumed abort after the restart
    assert blocked["money_created"] == 0 and not blocked["split"]
    assert any(e["kind"] == "vote" for e in blocked["events"])  # the trace comes from the surviving nodes

    decided = crashes["paxos-commit"]
    assert not decided["needed_coordinator_back"] and not decided["split"] and not decided["blocked"]
    assert _outcomes(decided) == {"committed"}  # the votes had reached the acceptors
    assert decided["decided_after_s"] is not None and decided["decided_after_s"] < 6.0
    assert decided["money_created"] == 0

    plain, quorum = partitions["3pc"], partitions["3pc-quorum"]
    # plain 3PC: the precommitted side commits alone, the waiting side aborts; reported, not hidden
    assert plain["split_during_partition"] and plain["split"]
    assert plain["verdict"].startswith("VIOLATION")
    assert plain["shards"] == {"shard-0": "committed", "shard-1": "aborted", "shard-2": "aborted"}
    assert plain["money_created"] == -AMOUNT  # the bank lost the money shard-0 sent
    # quorum 3PC: the majority aborts, the precommitted minority blocks, and joins the abort once healed
    assert not quorum["split_during_partition"] and not quorum["split"]
    assert quorum["blocked_during_partition"] == ["shard-0"]
    assert quorum["during_partition"]["shard-1"] == quorum["during_partition"]["shard-2"] == "aborted"
    assert _outcomes(quorum) == {"aborted"} and quorum["money_created"] == 0
