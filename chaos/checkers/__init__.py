"""What every checker returns: a verdict, the anomalies behind it, and counts of what was checked.

The checkers themselves live one per workload (``bank``, ``sets``, ``list_append``); they read a
``chaos.history.History`` and nothing else, so a recorded run can be checked again from its file.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from itertools import zip_longest
from typing import Any

from chaos.history import History

SHOWN = 20  # anomalies that summary() prints one by one; the counts cover all of them


@dataclass(frozen=True)
class Anomaly:
    """One thing the history shows that the isolation level forbids."""

    type: str  # e.g. "G-single", "lost", "wrong-total"
    detail: str
    ops: list[int] = field(default_factory=list)  # indexes of the ops involved
    cycle: list[str] = field(default_factory=list)  # a printable cycle, "T12 -ww(k3)-> T40 ..." in tokens


@dataclass(frozen=True)
class CheckResult:
    valid: bool
    anomalies: list[Anomaly]
    stats: dict[str, int]

    @classmethod
    def of(cls, anomalies: list[Anomaly], stats: dict[str, int]) -> CheckResult:
        """Valid exactly when there is no anomaly."""
        return cls(not anomalies, anomalies, stats)

    def counts(self) -> dict[str, int]:
        """Anomalies by type."""
        return dict(sorted(Counter(a.type for a in self.anomalies).items()))

    def summary(self, shown: int = SHOWN) -> str:
        """A few lines for a person: the verdict, counts by type, the stats, then some anomalies of each type."""
        lines = [f"valid: {'yes' if self.valid else 'NO'} ({len(self.anomalies)} anomalies)"]
        lines += [f"  {kind}: {count}" for kind, count in self.counts().items()]
        lines.append("stats: " + ", ".join(f"{name}={value}" for name, value in self.stats.items()))
        for anomaly in self.sample(shown):
            lines.append(f"{anomaly.type}: {anomaly.detail}")
            if anomaly.cycle:
                lines.append("    " + " ".join(anomaly.cycle))
        if len(self.anomalies) > shown:
            lines.append(f"... and {len(self.anomalies) - shown} more")
        return "\n".join(lines)

    def sample(self, shown: int) -> list[Anomaly]:
        """At most ``shown`` anomalies, taken from each type in turn, so that a flood of one kind (say a
        thousand "internal") does not hide the single cycle of another."""
        by_type: dict[str, list[Anomaly]] = defaultdict(list)
        for anomaly in self.anomalies:
            by_type[anomaly.type].append(anomaly)
        turns = zip_longest(*(by_type[kind] for kind in sorted(by_type)))
        return [anomaly for turn in turns for anomaly in turn if anomaly is not None][:shown]

    def to_json(self) -> dict[str, Any]:
        return {"valid": self.valid, "counts": self.counts(), "stats": self.stats,
                "anomalies": [asdict(a) for a in self.anomalies]}


def outcome_counts(history: History, f: str) -> dict[str, int]:
    """How the invocations of ``f`` ended, as ``{f}-ok``, ``{f}-fail``, ``{f}-info``; one never completed is
    counted ``info``, since it is just as indeterminate (Jepsen's rule)."""
    counts = Counter(done.type if done else "info" for invoke, done in history.pairs() if invoke.f == f)
    return {f"{f}-{kind}": counts.get(kind, 0) for kind in ("ok", "fail", "info")}
