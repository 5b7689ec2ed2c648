"""The package's public surface is what README documents, and the client does not load node-side code."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import commit

ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = {"saga"}  # imported as ``from commit.saga import ...``; each has its own __all__


def test_every_name_the_readme_uses_is_exported() -> None:
    readme = (ROOT / "README.md").read_text()
    used = set(re.findall(r"commit\.([A-Za-z_]+)", readme)) - SUBPACKAGES
    exported = set(commit.__all__)
    assert used, "README shows no commit.* names"
    assert used <= exported, f"README mentions names that are not exported: {used - exported}"
    for name in ("Unavailable", "Timeout", "Unauthorized", "SessionExpired", "InternalError"):
        assert name in readme and name in exported


def test_every_name_the_readme_imports_from_a_subpackage_is_exported() -> None:
    readme = (ROOT / "README.md").read_text()
    for package in SUBPACKAGES:
        module = importlib.import_module(f"commit.{package}")
        for names in re.findall(rf"from commit\.{package} import ([\w, ]+)", readme):
            missing = {n.strip() for n in names.split(",")} - set(module.__all__)
            assert not missing, f"README imports {missing} from commit.{package}, which does not export them"


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


# Which packages a module of each layer must not import (docs/ARCHITECTURE.md, "Layers and arrows").
FORBIDDEN = {
    "consensus": ("commit", "bench", "node"),
    "commit.protocols": ("commit.node", "commit.tooling", "commit.client", "commit.transaction", "bench", "node"),
    "commit": ("commit.node", "commit.tooling", "bench", "node"),
    "commit.node": ("commit.tooling", "bench", "node"),
    "commit.tooling": ("commit.node", "bench", "node"),
    "bench": ("commit.node", "node"),
    "chaos": ("commit.node", "bench", "node"),  # the harness drives node processes, never their code
    "examples": ("commit.node", "bench", "node"),  # an example uses the library as its users do
}


def _layer(module: str) -> str:
    return max((layer for layer in FORBIDDEN if module == layer or module.startswith(layer + ".")), key=len)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _is_under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for folder in ("consensus", "commit", "bench", "chaos", "examples"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            layer = _layer(module)
            for name in _imports(path):
                if any(_is_under(name, banned) for banned in FORBIDDEN[layer]):
                    wrong.append(f"{module} imports {name}")
    assert not wrong, wrong


def test_the_layer_check_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from commit.node.serve import serve_node\n")
    assert any(_is_under(name, "commit.node") for name in _imports(bad))
