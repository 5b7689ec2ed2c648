"""A run's timeline as a picture: operations completed per second, and the faults that struck.

``python -m chaos plot RUN_DIR [RUN_DIR ...] --out timeline.png`` draws one panel per kept run (its
``history.jsonl`` and ``nemesis.jsonl``), or ``--window 100:160`` of each: successful operations per second, failed and indeterminate ones
below, and each nemesis event as a band over the seconds it lasted, coloured by kind. It shows at a glance
what the summary's unavailability windows say in numbers: how deep each fault cut and how soon the run
recovered.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from chaos.history import History
from chaos.runner import FINAL_PROCESS  # the final reads' processes: not part of the timeline

COLOURS = {"kill": "tab:red", "pause": "tab:orange", "partition": "tab:blue", "drop-decisions": "tab:purple",
           "cut-rpc": "tab:green"}


def per_second(history: History, start: float) -> dict[str, Counter[int]]:
    """Completions of each type ("ok", "fail", "info") by whole second since ``start``."""
    counts: dict[str, Counter[int]] = {kind: Counter() for kind in ("ok", "fail", "info")}
    for op in history.ops:
        if op.type in counts and op.process < FINAL_PROCESS:
            counts[op.type][int(op.time - start)] += 1
    return counts


def plot_runs(directories: list[Path], out: Path, window: tuple[float, float] | None = None) -> Path:
    """One panel per run; ``window`` (seconds from the run's start) zooms in on part of each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(directories), 1, figsize=(12, 2.6 * len(directories)), squeeze=False)
    for ax, directory in zip(axes[:, 0], directories):
        history = History.read_jsonl(directory / "history.jsonl")
        events = [json.loads(line) for line in (directory / "nemesis.jsonl").read_text().splitlines() if line]
        spec: dict[str, Any] = json.loads((directory / "summary.json").read_text())["spec"]
        start = min(op.time for op in history.ops)
        counts = per_second(history, start)
        seconds = range(max(max(c, default=0) for c in counts.values()) + 1)
        for event in events:
            ax.axvspan(event["start"] - start, event["end"] - start, color=COLOURS.get(event["kind"], "gray"),
                       alpha=0.25, linewidth=0)
        ax.plot(seconds, [counts["ok"][s] for s in seconds], color="black", linewidth=0.8, label="ok/s")
        ax.plot(seconds, [counts["fail"][s] + counts["info"][s] for s in seconds], color="tab:red",
                linewidth=0.6, label="fail + info/s")
        ax.set_title(f"{spec['protocol']}, {spec['workload']}, seed {spec['seed']}", fontsize="small")
        ax.set_ylabel("ops/s")
        ax.set_xlim(*(window or (0, len(seconds))))
        ax.legend(loc="upper right", fontsize="x-small")
    axes[-1, 0].set_xlabel("seconds (bands: red kill, orange pause, blue partition)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
