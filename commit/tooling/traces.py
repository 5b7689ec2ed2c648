"""A transaction's trace, read back from every node: totals, and a text sequence diagram.

The nodes record what they sent and forced (``commit.node.tracing``); these turn the merged records into
what ``python node.py trace`` prints and what the tests compare with Gray & Lamport's cost formulas.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


def summarize(events: list[dict[str, Any]]) -> dict[str, Any]:
    messages = [e for e in events if e["event"] == "message"]
    return {
        "messages": len(messages),
        "messages_by_type": dict(Counter(e["kind"] for e in messages)),
        "forced_writes": sum(1 for e in events if e["event"] == "forced_write"),
        "forced_writes_by_type": dict(Counter(e["kind"] for e in events if e["event"] == "forced_write")),
        "message_delays": max((e["hop"] for e in messages), default=0),
    }


def sequence_diagram(events: list[dict[str, Any]], nodes: list[str]) -> str:
    """A text sequence diagram: one column per node, one line per message or forced write, in time order."""
    width = 18
    centers = [i * width + width // 2 for i in range(len(nodes))]
    col = {n: centers[i] for i, n in enumerate(nodes)}
    lines = ["".join(n.center(width) for n in nodes).rstrip()]
    for e in sorted(events, key=lambda e: e["t"]):
        row = [" "] * (width * len(nodes))
        for c in centers:
            row[c] = "|"
        note = ""
        if e["event"] == "message" and not (e["src"] in col and e["dst"] in col):
            note = f"{e['src']}: {e['kind']}({e['hop']}) to {e['dst']}"  # e.g. a group whose leader it never reached
        elif e["event"] == "message":
            a, b = col[e["src"]], col[e["dst"]]
            label = f"{e['kind']}({e['hop']})"
            if a == b:
                note = f"{e['src']}: {label} to itself"
            else:
                lo, hi = min(a, b), max(a, b)
                for x in range(lo + 1, hi):
                    row[x] = "-"
                row[hi - 1 if b > a else lo + 1] = ">" if b > a else "<"
                room = hi - lo - 4
                text = label[:room]
                start = lo + 2 + (room - len(text)) // 2
                row[start : start + len(text)] = list(text)
        elif e["event"] == "forced_write":
            note = f"{e['node']}: forced write ({e['kind']})"
        lines.append(("".join(row).rstrip() + ("   " + note if note else "")).rstrip())
    return "\n".join(lines)
