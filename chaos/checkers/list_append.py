"""Elle's list-append checker (Kingsbury & Alvaro 2020, "Elle: Inferring Isolation Anomalies from
Experimental Observations"), over the ``f="txn"`` operations of a history.

Why list-append: every appended value is unique per key and a read returns the whole list, so a read
names the transaction behind each element and shows a prefix of the key's version order. From outside the
database that recovers Adya's dependencies (Adya, "Weak Consistency: A Generalized Theory and Optimistic
Implementations for Distributed Transactions", MIT PhD thesis, 1999):

* ww: the writer of element i precedes the writer of element i+1 of the key's order;
* wr: the writer of a read's last element precedes the reader;
* rw (anti-dependency): a reader that saw the list up to element i precedes the writer of element i+1;

and a cycle of them is a phenomenon Adya names by its edges: only ww is G0, ww and wr is G1c,
exactly one rw is G-single, more is G2. With ``strict`` a real-time edge joins each ``ok`` txn to those
invoked after it completed; a cycle that needs one breaks strict serializability but not serializability,
and its name gets "-realtime", as Elle names them.

Which txns count (Elle's treatment of indeterminate transactions): ``ok`` ones; ``fail`` ones did not
happen, so reading their writes is G1a; an ``info`` one is in the graph once some read shows one of its
appends (it committed), and left out otherwise (it may never have happened, so nothing may be inferred
from it).
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

from chaos.checkers import Anomaly, CheckResult, outcome_counts
from chaos.history import History, Op

# An edge's kinds, each with the key that made it ("" for real time), and the graph: u -> v -> kind -> key.
Labels = dict[str, str]
Graph = dict[int, dict[int, Labels]]
Edge = tuple[int, str, str, int]  # (from, kind, key, to)

WW = frozenset({"ww"})
WW_WR = frozenset({"ww", "wr"})
DEPENDENCIES = frozenset({"ww", "wr", "rw"})
WITH_REALTIME = DEPENDENCIES | {"rt"}
# When an edge has several kinds, the one a cycle is named by: the mildest (so that a G0 is not called a G2),
# and a dependency before real time, so that "-realtime" appears only where it is needed.
KIND_ORDER = ("ww", "rt", "wr", "rw")
# A cycle search in a large component tries at most this many edges, and fewer the larger it is (Elle bounds
# its searches too): valid histories have no components, broken ones must still be checked in seconds.
MAX_TRIES = 32
SEARCH_BUDGET = 200_000
SHOWN_ELEMENTS = 8  # of a list, in a message
SHOWN_TXNS = 10  # of the txns that read something, in a message and in an anomaly's ops


@dataclass(frozen=True)
class _Txn:
    name: int  # the index of its completion (of its invocation if it never completed): "T<name>"
    status: str  # "ok", "fail" or "info" (never completed: info)
    invoke: Op
    done: Op | None
    mops: list[Any]  # [f, key, value] micro-ops: as completed if ok, else as invoked


@dataclass(frozen=True)
class _Read:
    txn: _Txn
    key: str
    value: list[Any]
    external: bool  # the txn's first look at the key, before it appended to it (Elle's "external read")


@dataclass(frozen=True)
class _Key:
    """One key's reads, split by whether they are prefixes of the longest: its version order."""

    longest: _Read
    reads: list[_Read]
    compatible: list[_Read]  # prefixes of the order
    wrong: list[_Read]  # the others

    @property
    def order(self) -> list[Any]:
        return self.longest.value


def check_list_append(history: History, strict: bool = True) -> CheckResult:
    """Check the txns of ``history``: each one's own reads, each key's reads against one version order, and
    the dependency graph (with real-time edges if ``strict``) for cycles, one reported per component."""
    txns = _txns(history)
    writer, last_append = _writers(txns)
    reads = [read for t in txns if t.status == "ok" for read in _reads(t)]
    keys = _keys(reads)
    anomalies = [a for t in txns if t.status == "ok" for a in _internal(t)]
    for key, k in keys.items():
        anomalies += _incompatible(key, k)
        anomalies += _impossible_values(key, k, writer)
        anomalies += _intermediate_reads(key, k, writer, last_append)

    seen = {w.name for key, k in keys.items() for values in [k.order, *(r.value for r in k.wrong)]
            for e in values if (w := writer.get((key, e))) is not None}
    nodes = {t.name for t in txns if t.status == "ok" or (t.status == "info" and t.name in seen)}
    graph: Graph = defaultdict(dict)
    for key, k in keys.items():
        _add_dependencies(graph, nodes, key, k, writer)
    if strict:
        _add_realtime(graph, [t for t in txns if t.status == "ok"])
    components = _sccs(_adjacency(graph, sorted(nodes), DEPENDENCIES))
    cycles = [_dependency_cycle(graph, scc) for scc in components]
    if strict:
        cycles += _realtime_cycles(graph, nodes, components)
    anomalies += [_cycle_anomaly(cycle) for cycle in cycles]

    stats = outcome_counts(history, "txn") | {
        "info-committed": sum(1 for t in txns if t.status == "info" and t.name in nodes),
        "reads": len(reads), "keys": len(keys), "edges": sum(len(out) for out in graph.values()),
        "cycles": len(cycles)}
    return CheckResult.of(anomalies, stats)


def _txns(history: History) -> list[_Txn]:
    txns = []
    for invoke, done in history.pairs():
        if invoke.f == "txn":
            status = done.type if done else "info"
            mops = done.value if done is not None and status == "ok" else invoke.value
            txns.append(_Txn(done.index if done else invoke.index, status, invoke, done, mops))
    return txns


def _writers(txns: list[_Txn]) -> tuple[dict[tuple[str, Any], _Txn], dict[tuple[int, str], Any]]:
    """Who appended each (key, value), whatever became of it, and each txn's last append to each key."""
    writer: dict[tuple[str, Any], _Txn] = {}
    last_append: dict[tuple[int, str], Any] = {}
    for t in txns:
        for f, key, value in t.mops:
            if f == "append":
                if (key, value) in writer:
                    raise ValueError(f"{value!r} appended to {key!r} by both T{writer[key, value].name} and "
                                     f"T{t.name}: list-append needs values unique per key")
                writer[key, value] = t
                last_append[t.name, key] = value
    return writer, last_append


def _reads(t: _Txn) -> Iterator[_Read]:
    looked: set[str] = set()
    for f, key, value in t.mops:
        if f == "r":
            yield _Read(t, key, value or [], key not in looked)
        looked.add(key)


def _internal(t: _Txn) -> Iterator[Anomaly]:
    """A txn's reads against its own earlier micro-ops (Elle's internal consistency): after a read
    the key is known exactly, so a later read must equal it plus the appends since; before any read the
    txn's own appends so far must end the list (some prefix before them is unknown)."""
    known: dict[str, list[Any]] = {}  # key -> its value at the txn's last read of it
    appended: dict[str, list[Any]] = defaultdict(list)  # key -> the txn's appends since then
    for f, key, value in t.mops:
        if f == "append":
            appended[key].append(value)
            continue
        value = value or []
        mine = appended.pop(key, [])
        if key in known:
            expected, fits = _show(known[key] + mine), value == known[key] + mine
        else:
            expected = f"a list ending in {mine}"
            fits = len(value) >= len(mine) and value[len(value) - len(mine):] == mine
        if not fits:
            yield Anomaly("internal", f"T{t.name} read {key} = {_show(value)}, but its own earlier micro-ops say "
                                      f"{expected}", [t.name])
            return
        known[key] = value


def _keys(reads: list[_Read]) -> dict[str, _Key]:
    by_key: dict[str, list[_Read]] = defaultdict(list)
    for read in reads:
        by_key[read.key].append(read)
    keys = {}
    for key, key_reads in sorted(by_key.items()):
        longest = max(key_reads, key=lambda r: len(r.value))
        compatible: list[_Read] = []
        wrong: list[_Read] = []
        for r in key_reads:
            (compatible if longest.value[:len(r.value)] == r.value else wrong).append(r)
        keys[key] = _Key(longest, key_reads, compatible, wrong)
    return keys


def _incompatible(key: str, k: _Key) -> Iterator[Anomaly]:
    """Reads of one key that are not prefixes of one another: no single version order explains them."""
    for r in k.wrong:
        differ = next(i for i, (mine, theirs) in enumerate(zip(r.value, k.order)) if mine != theirs)
        yield Anomaly("incompatible-order", f"{key}: T{r.txn.name} read {_show(r.value)}, T{k.longest.txn.name} "
                                            f"read {_show(k.order)}; they differ at position {differ}",
                      [r.txn.name, k.longest.txn.name])


def _impossible_values(key: str, k: _Key, writer: dict[tuple[str, Any], _Txn]) -> Iterator[Anomaly]:
    """Elements no committed state can hold: one no txn appended ("garbage", Elle's), one only a failed txn
    appended ("G1a", Adya's aborted read), one twice in a read ("duplicate", Elle's). One anomaly per element,
    naming the txns that read it; a compatible read holds position p of the order when it is longer than p."""
    readers: dict[tuple[str, Any], list[int]] = defaultdict(list)
    for position, kind, element in _bad_elements(key, k.order, writer):
        readers[kind, element] += [r.txn.name for r in k.compatible if len(r.value) > position]
    for r in k.wrong:
        for _position, kind, element in _bad_elements(key, r.value, writer):
            readers[kind, element].append(r.txn.name)
    for (kind, element), names in readers.items():
        w = writer.get((key, element))
        why = ("appears twice in a read" if kind == "duplicate" else "was never appended" if w is None
               else f"was appended only by T{w.name}, which failed")
        unique = sorted(set(names))
        yield Anomaly(kind, f"{key}: {element!r} {why}; read by {_names(unique)}",
                      ([w.name] if w else []) + unique[:SHOWN_TXNS])


def _bad_elements(key: str, values: list[Any],
                  writer: dict[tuple[str, Any], _Txn]) -> Iterator[tuple[int, str, Any]]:
    seen: set[Any] = set()
    for position, element in enumerate(values):
        w = writer.get((key, element))
        if element in seen:
            yield position, "duplicate", element
        elif w is None:
            yield position, "garbage", element
        elif w.status == "fail":
            yield position, "G1a", element
        seen.add(element)


def _intermediate_reads(key: str, k: _Key, writer: dict[tuple[str, Any], _Txn],
                        last_append: dict[tuple[int, str], Any]) -> Iterator[Anomaly]:
    """A read that ends at an element its writer appended more after saw that txn half done (Adya G1b)."""
    readers: dict[Any, list[int]] = defaultdict(list)
    for r in k.reads:
        w = writer.get((key, r.value[-1])) if r.value else None
        if w is not None and w.status != "fail" and w is not r.txn and last_append[w.name, key] != r.value[-1]:
            readers[r.value[-1]].append(r.txn.name)
    for element, names in readers.items():
        w = writer[key, element]
        yield Anomaly("G1b", f"{key}: {_names(names)} read up to {element!r}, which T{w.name} followed with "
                             f"{last_append[w.name, key]!r}", [w.name] + names[:SHOWN_TXNS])


def _show(values: list[Any]) -> str:
    """A list for a message: whole if short, else its last few elements (the recent, telling end)."""
    if len(values) <= SHOWN_ELEMENTS:
        return str(values)
    return f"[..., {', '.join(map(repr, values[-SHOWN_ELEMENTS:]))}] ({len(values)} elements)"


def _names(names: list[int]) -> str:
    shown = ", ".join(f"T{n}" for n in names[:SHOWN_TXNS])
    return shown + (f" and {len(names) - SHOWN_TXNS} more" if len(names) > SHOWN_TXNS else "")


def _add_dependencies(graph: Graph, nodes: set[int], key: str, k: _Key, writer: dict[tuple[str, Any], _Txn]) -> None:
    """ww along the order, wr into each external read, rw out of each external read that is a prefix of the
    order (another read's version has no known successor). Only between txns of the graph, never a self-edge."""
    writers = [writer.get((key, e)) for e in k.order]
    for a, b in zip(writers, writers[1:]):
        _link(graph, nodes, a, b, "ww", key)
    for r in k.reads:
        if r.external and r.value:
            _link(graph, nodes, writer.get((key, r.value[-1])), r.txn, "wr", key)
    for r in k.compatible:
        if r.external and len(r.value) < len(k.order):
            _link(graph, nodes, r.txn, writers[len(r.value)], "rw", key)


def _link(graph: Graph, nodes: set[int], a: _Txn | None, b: _Txn | None, kind: str, key: str) -> None:
    if a is not None and b is not None and a is not b and a.name in nodes and b.name in nodes:
        graph[a.name].setdefault(b.name, {}).setdefault(kind, key)


def _add_realtime(graph: Graph, oks: list[_Txn]) -> None:
    """An edge from each ok txn to every ok txn invoked after it completed, kept sparse as Elle keeps it:
    sweep the invocations and completions in time order with the set of completed txns that no later
    completion has covered yet; an invocation links from that set only, and a completion covers the txns
    it linked from. Every omitted edge is implied by a path through a covering txn, and the set stays about
    as large as the concurrency, so the sweep is near-linear."""
    events = sorted([(t.invoke.time, 0, t.name) for t in oks] +
                    [(t.done.time, 1, t.name) for t in oks if t.done is not None])
    frontier: set[int] = set()
    before: dict[int, set[int]] = {}  # invoked txn -> the frontier it saw
    for _time, is_completion, name in events:
        if not is_completion:
            before[name] = set(frontier)
            continue
        for earlier in before.pop(name):
            graph[earlier].setdefault(name, {}).setdefault("rt", "")
            frontier.discard(earlier)
        frontier.add(name)


def _adjacency(graph: Graph, nodes: Collection[int], kinds: frozenset[str]) -> dict[int, list[int]]:
    """The edges among ``nodes`` with one of ``kinds``."""
    inside = set(nodes)
    return {u: [v for v, labels in graph.get(u, {}).items() if v in inside and not kinds.isdisjoint(labels)]
            for u in nodes}


def _sccs(adjacency: dict[int, list[int]]) -> list[list[int]]:
    """Tarjan's strongly connected components with a cycle (two txns or more: there are no self-edges);
    iterative, since a history's paths are far deeper than Python's stack."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on_stack: set[int] = set()
    found: list[list[int]] = []
    for root in adjacency:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(adjacency[root]))]
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(adjacency[child])))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def _dependency_cycle(graph: Graph, scc: list[int]) -> list[Edge]:
    """The mildest cycle found in a component of dependencies: G0 if its ww edges alone close one, else G1c
    if ww and wr do (both exact, by components of those edges alone), else the cycle through one of its rw
    edges with the fewest other rw edges (a G-single if any is found, G2 otherwise)."""
    for kinds in (WW, WW_WR):
        inner = _sccs(_adjacency(graph, scc, kinds))
        if inner:
            inside = set(inner[0])
            start = inner[0][0]
            after = next(v for v, labels in graph[start].items() if v in inside and not kinds.isdisjoint(labels))
            cycle = _cycle_through(graph, inside, kinds, [(start, after)])
            break
    else:
        members = set(scc)
        rw = [(u, v) for u in scc for v, labels in graph[u].items() if v in members and "rw" in labels]
        cycle = _cycle_through(graph, members, DEPENDENCIES, rw)
    assert cycle is not None, "every edge inside a strongly connected component lies on a cycle"
    return cycle


def _realtime_cycles(graph: Graph, nodes: set[int], components: list[list[int]]) -> list[list[Edge]]:
    """One cycle for each component of the graph with real-time edges that is not just a component of
    dependencies: such a component has a real-time edge between txns that dependencies alone do not put on a
    common cycle, so a cycle through it needs real time. Searched as in ``_dependency_cycle``: with ww and
    real time only, then with wr too, then with rw too."""
    component_of = {n: i for i, scc in enumerate(components) for n in scc}
    cycles = []
    for scc in _sccs(_adjacency(graph, sorted(nodes), WITH_REALTIME)):
        members = set(scc)
        crossing = [(u, v) for u in scc for v, labels in graph[u].items()
                    if v in members and "rt" in labels and (component_of.get(u) is None or
                                                            component_of.get(u) != component_of.get(v))]
        if crossing:
            found = (_cycle_through(graph, members, kinds | {"rt"}, crossing) for kinds in (WW, WW_WR, DEPENDENCIES))
            cycles.append(next(cycle for cycle in found if cycle is not None))
    return cycles


def _cycle_through(graph: Graph, members: set[int], kinds: frozenset[str],
                   edges: list[tuple[int, int]]) -> list[Edge] | None:
    """The mildest cycle, by ``_cost``, made of one of ``edges`` (u, v) and a path back from v to u."""
    tries = max(1, min(MAX_TRIES, SEARCH_BUDGET // len(members)))
    best: list[Edge] | None = None
    for u, v in edges[:tries]:
        kind = _kind(graph[u][v], kinds)
        back = _mildest_path(graph, members, kinds, v, u)
        if back is not None and kind is not None:
            cycle = [(u, kind, graph[u][v][kind], v), *back]
            if best is None or _cost(cycle) < _cost(best):
                best = cycle
    return best


def _kind(labels: Labels, kinds: frozenset[str]) -> str | None:
    return next((kind for kind in KIND_ORDER if kind in labels and kind in kinds), None)


def _cost(edges: list[Edge]) -> tuple[int, int]:
    """What makes a cycle milder: fewer rw edges (G-single, not G2), then fewer edges. Whether it has wr
    edges the searches settle by the kinds they allow."""
    return sum(kind == "rw" for _u, kind, _key, _v in edges), len(edges)


def _mildest_path(graph: Graph, members: set[int], kinds: frozenset[str], source: int,
                  target: int) -> list[Edge] | None:
    """Dijkstra's path inside ``members`` from ``source`` to ``target`` with the lowest ``_cost``, as edges."""
    best: dict[int, tuple[int, int]] = {source: (0, 0)}
    came: dict[int, Edge] = {}
    heap = [((0, 0), source)]
    while heap:
        cost, u = heapq.heappop(heap)
        if u == target:
            path = []
            while u != source:
                path.append(came[u])
                u = came[u][0]
            return path[::-1]
        if cost > best[u]:
            continue
        for v, labels in graph.get(u, {}).items():
            kind = _kind(labels, kinds) if v in members else None
            if kind is None:
                continue
            step = (cost[0] + (kind == "rw"), cost[1] + 1)
            if v not in best or step < best[v]:
                best[v] = step
                came[v] = (u, kind, labels[kind], v)
                heapq.heappush(heap, (step, v))
    return None


def _cycle_anomaly(cycle: list[Edge]) -> Anomaly:
    """Named by Adya's phenomena (thesis): G0 only ww, G1c ww and wr, G-single one rw, G2 more."""
    first = min(range(len(cycle)), key=lambda i: cycle[i][0])
    cycle = cycle[first:] + cycle[:first]  # printed from its oldest txn
    kinds = [kind for _u, kind, _key, _v in cycle]
    rw = kinds.count("rw")
    name = "G2" if rw > 1 else "G-single" if rw == 1 else "G1c" if "wr" in kinds else "G0"
    if "rt" in kinds:
        name += "-realtime"
    tokens = [f"T{cycle[0][0]}"]
    for _u, kind, key, v in cycle:
        tokens += [f"-{kind}({key})->" if key else f"-{kind}->", f"T{v}"]
    return Anomaly(name, f"a cycle of {len(cycle)} txns", [u for u, _kind, _key, _v in cycle], tokens)
