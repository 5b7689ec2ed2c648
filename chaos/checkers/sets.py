"""The set checker: unique elements are added, then read back; it tests durability and that no outcome the
store reported was a lie (Jepsen's set checker).

What each outcome promises: an ``ok`` add happened, so the final read must hold the element ("lost"
otherwise); a ``fail`` add did not, so no read may hold it ("resurrected-fail"); an ``info`` add may or may
not have, so either is right and only counted ("recovered" or "not-recovered"). No read may hold an element
no one tried to add ("unexpected").

Only an add acknowledged before the final read began must be in it: one acknowledged while that read ran
may have been applied after the read saw its key (counted as "ok-during-final-read").
"""

from __future__ import annotations

from collections import defaultdict

from chaos.checkers import Anomaly, CheckResult, outcome_counts
from chaos.history import History, Op


def check_set(history: History) -> CheckResult:
    """Check the adds against every ``ok`` read, and against the last one for durability."""
    outcomes: dict[int, set[str]] = defaultdict(set)  # element -> how its adds ended
    acknowledged: dict[int, Op] = {}  # element -> its first ok completion
    reads: list[tuple[Op, Op]] = []  # ok reads: (invocation, completion)
    for invoke, done in history.pairs():
        if invoke.f == "add":
            outcomes[invoke.value].add(done.type if done else "info")
            if done is not None and done.type == "ok":
                acknowledged.setdefault(invoke.value, done)
        elif invoke.f == "read" and done is not None and done.type == "ok":
            reads.append((invoke, done))
    stats = outcome_counts(history, "add") | outcome_counts(history, "read")
    if not reads:
        return CheckResult.of([Anomaly("no-final-read", "no read succeeded, so nothing shows what is durable")], stats)

    anomalies = _misread(reads, outcomes)
    final_invoke, final = max(reads, key=lambda pair: pair[1].index)
    present = set(final.value)
    stats |= {"final-read-size": len(present), "lost": 0, "ok-during-final-read": 0, "recovered": 0,
              "not-recovered": 0}
    for element, tried in sorted(outcomes.items()):
        if "ok" not in tried:
            if "info" in tried:
                stats["recovered" if element in present else "not-recovered"] += 1
        elif element not in present:
            ack = acknowledged[element]
            if ack.time < final_invoke.time:
                stats["lost"] += 1
                anomalies.append(Anomaly("lost", f"element {element} was acknowledged (op {ack.index}) but is "
                                                 f"absent from the final read (op {final.index})",
                                         [ack.index, final.index]))
            else:
                stats["ok-during-final-read"] += 1
    return CheckResult.of(anomalies, stats)


def _misread(reads: list[tuple[Op, Op]], outcomes: dict[int, set[str]]) -> list[Anomaly]:
    """Elements some read holds that none could: never tried, or tried only by adds that failed; one
    anomaly per element, naming the first read that held it."""
    first_read: dict[tuple[str, int], Op] = {}
    for _invoke, read in reads:
        for element in read.value:
            tried = outcomes.get(element)
            if tried is None:
                first_read.setdefault(("unexpected", element), read)
            elif tried == {"fail"}:
                first_read.setdefault(("resurrected-fail", element), read)
    what = {"unexpected": "no add of it was ever invoked", "resurrected-fail": "every add of it failed"}
    return [Anomaly(kind, f"element {element} is in the read at op {read.index}, but {what[kind]}", [read.index])
            for (kind, element), read in sorted(first_read.items())]
