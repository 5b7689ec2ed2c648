"""``python -m chaos plot``: completions per second from a kept run, and the PNG drawn from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chaos.__main__ import main
from chaos.history import History
from chaos.runner import FINAL_PROCESS
from chaos.timeline import per_second


def kept_run(directory: Path) -> History:
    now = [100.0]
    history = History(clock=lambda: now[0])
    for second, outcome in ((0, "ok"), (0, "ok"), (1, "fail"), (2, "info"), (2, "ok")):
        now[0] = 100.0 + second + 0.1
        op = history.invoke(second * 10 + len(history.ops), "read", None)
        now[0] += 0.5
        history.complete(op, outcome)
    op = history.invoke(FINAL_PROCESS, "read", None)
    history.complete(op, "ok")  # a final read: after the run, not on its timeline
    directory.mkdir()
    history.write_jsonl(directory / "history.jsonl")
    (directory / "nemesis.jsonl").write_text(json.dumps(
        {"kind": "kill", "target": "random", "nodes": ["n1"], "start": 100.5, "end": 101.5, "cut": []}) + "\n")
    (directory / "summary.json").write_text(json.dumps(
        {"spec": {"protocol": "paxos-commit", "workload": "bank", "seed": 7}}))
    return history


def test_completions_are_counted_by_second_without_the_final_reads(tmp_path: Path) -> None:
    history = kept_run(tmp_path / "run")
    counts = per_second(history, 100.0)
    assert dict(counts["ok"]) == {0: 2, 2: 1}
    assert dict(counts["fail"]) == {1: 1}
    assert dict(counts["info"]) == {2: 1}


def test_plot_writes_a_png_and_refuses_a_directory_without_a_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kept_run(tmp_path / "run")
    out = tmp_path / "timeline.png"
    assert main(["plot", str(tmp_path / "run"), "--out", str(out), "--window", "0:3"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit) as refused:
        main(["plot", str(tmp_path), "--out", str(out)])
    assert refused.value.code == 2
    assert "not a kept run" in capsys.readouterr().err
