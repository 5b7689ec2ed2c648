"""The ``test.fault`` requests an operator or a test sends to cut or heal a link in both directions.

Each node filters only its own outgoing messages (``commit.node.faults``), so one link takes a request
to each of its two ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def link_requests(op: str, a: str | None, b: str | None,
                  node_ids: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """The ``test.fault`` calls, as (node, params), that cut or heal links in both directions.

    ``cut``: a and b both required. ``heal``: a and b heal their link; a alone heals every link of a (on
    a and on every other node of ``node_ids``); neither heals every link on every node of ``node_ids``.
    """
    if op == "cut":
        if a is None or b is None or a == b:
            raise ValueError("cut takes two different nodes")
        return [(a, {"op": "cut", "peer": b}), (b, {"op": "cut", "peer": a})]
    if op != "heal":
        raise ValueError(f"link_requests handles cut and heal, not {op!r}")
    if a is None:
        if b is not None:
            raise ValueError("heal takes no node, one node, or two nodes")
        return [(n, {"op": "heal"}) for n in node_ids]
    if b is None:
        return [(a, {"op": "heal"})] + [(n, {"op": "heal", "peer": a}) for n in node_ids if n != a]
    return [(a, {"op": "heal", "peer": b}), (b, {"op": "heal", "peer": a})]
