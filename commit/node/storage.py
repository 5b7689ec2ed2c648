"""The files a node writes outside its Raft groups that it cannot write now, for ``node.status``.

A replica's own journal reports itself in its group's status row (``DurableSyncObj.storage_problem``).
The ``2pc`` decision log and the Paxos acceptor's log belong to the node: while either cannot be written
(a full disk, an I/O error), what it serves answers ``unavailable``, and this says why
(docs/OPERATIONS.md, "Corrupted files and a full disk").
"""

from __future__ import annotations

from collections.abc import Iterable

from commit.node.decision_stores import LocalLogStore
from commit.node.transaction_manager import TransactionManager
from consensus.acceptor import Acceptor


def storage_problems(managers: Iterable[TransactionManager], acceptor: Acceptor | None) -> dict[str, str]:
    """File path -> what keeps it from being written, for every such file of this node; empty if none."""
    logs = [m.store.log for m in managers if isinstance(m.store, LocalLogStore)]
    problems = {str(log.path): log.problem() for log in logs}
    if acceptor is not None:
        problems[str(acceptor.log.path)] = acceptor.log.problem()
    return {path: problem for path, problem in problems.items() if problem is not None}
