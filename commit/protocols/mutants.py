"""Deliberately broken builds: classic mistakes a checker must catch, each switched on by a test flag only.

A harness that never fails proves nothing (Jepsen's own checkers are tested against known-bad systems).
Each mutant is one rule of a correct protocol turned off, and runs only where ``transactions.mutant``
names it, which ``commit.config`` refuses unless ``transactions.fault_hooks`` is on (a test cluster): no
normal build can run one. ``tests/test_chaos_mutants.py`` shows that the chaos harness catches each.
"""

from __future__ import annotations

import enum


class Mutant(enum.Enum):
    NONE = ""
    # A participant votes yes without persisting its prepare (no Raft entry, no locks): Gray & Reuter's first
    # rule of 2PC, that a participant forces its prepared record before it votes, broken.
    SKIP_PREPARE_PERSIST = "skip-prepare-persist"
    # A Paxos Commit leader that decides on F votes (F the acceptors' tolerated failures): an instance counts as
    # chosen on F acceptors' 2b, not F+1, and F instances chosen "prepared" decide commit, even beside a "no".
    # Gray & Lamport 2006, sections 3-4: a value is chosen by a majority, and commit needs every RM prepared.
    DECIDE_ON_F_VOTES = "decide-on-f-votes"
    # Reads and their validation at prepare ignore a prepared writer's lock: a reader can see one shard's half
    # of a committing transaction (the read rule of strict two-phase locking broken).
    READ_SKIPS_LOCK = "read-skips-lock"


NAMES = tuple(m.value for m in Mutant if m is not Mutant.NONE)
