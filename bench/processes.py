"""What a node process has cost so far: CPU split into user and system time, and context switches.

Issue 15 asked for system time and context switches before and after cutting threads; the totals come from
``/proc/<pid>/stat`` (utime and stime, fields 14 and 15: every thread of the process, exited ones included)
and the switches from each live thread's ``/proc/<pid>/task/<tid>/status`` (a thread that has exited is
not counted: a node's threads live as long as it does).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from commit.tooling.localcluster import LocalCluster


@dataclass(frozen=True)
class Counters:
    user_s: float
    system_s: float
    switches: int  # voluntary + involuntary context switches of the live threads
    threads: int

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.system_s

    def __sub__(self, other: Counters) -> Counters:
        return Counters(self.user_s - other.user_s, self.system_s - other.system_s,
                        self.switches - other.switches, self.threads)


def counters(pid: int) -> Counters | None:
    """``pid``'s counters now, or None if it is gone."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    switches = 0
    for task in tasks:
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
        except OSError:
            continue  # the thread ended while we looked
    return Counters(int(fields[11]) / tick, int(fields[12]) / tick, switches, len(tasks))


def node_counters(cluster: LocalCluster) -> dict[str, Counters]:
    """Every running node's counters, by node id."""
    found = {}
    for node_id, proc in cluster.procs.items():
        now = counters(proc.pid)
        if now is not None:
            found[node_id] = now
    return found
