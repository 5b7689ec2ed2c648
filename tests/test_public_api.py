"""The package's public surface is what README documents, and the client does not load node-side code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import commit

ROOT = Path(__file__).resolve().parent.parent


def test_every_name_the_readme_uses_is_exported() -> None:
    readme = (ROOT / "README.md").read_text()
    used = set(re.findall(r"commit\.([A-Za-z_]+)", readme))
    exported = set(commit.__all__)
    assert used, "README shows no commit.* names"
    assert used <= exported, f"README mentions names that are not exported: {used - exported}"
    for name in ("Unavailable", "Timeout", "Unauthorized", "SessionExpired", "InternalError"):
        assert name in readme and name in exported


def test_all_names_exist() -> None:
    assert sorted(commit.__all__) == sorted(set(commit.__all__))
    for name in commit.__all__:
        assert hasattr(commit, name), name


def test_client_import_loads_no_node_side_or_tooling_module() -> None:
    """``import commit`` is the client library: no node process code, no PySyncObj, no tooling."""
    code = ("import sys, commit; print(sorted(m for m in sys.modules if m.startswith(("
            "'pysyncobj', 'commit.node', 'commit.tooling', 'consensus.group', 'consensus.durability'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
