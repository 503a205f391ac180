"""The layer contract in pyproject.toml ([tool.importlinter]) is kept, and it bites.

``dev.py test`` runs ``lint-imports`` on the tree; these tests show that the tree keeps
the contract and that one upward import into a copy of the package breaks it (so the
contract is not vacuous: the layers resolve to real modules and chains are followed).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """Run lint-imports on the package in ``tree`` (it puts its working directory first
    on sys.path, so the copy there is the package analysed)."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(
        ROOT / "aether_django",
        tmp_path / "aether_django",
        ignore=shutil.ignore_patterns("__pycache__", "templates", "static"),
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_the_layer_contract() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "upward_import", "contract"),
    [
        # Core reaching up to the model layer, through a lazy import in a function.
        ("events.py", "def _late():\n    from .sharding import routing\n", "Layers"),
        # A primitive reaching up to the runtime outside the listed facades.
        ("store/jetstream/writes.py", "from ...runtime import get_runtime\n", "Layers"),
        # One primitive importing another.
        ("cluster/shards.py", "from ..bus import local\n", "Primitives"),
    ],
)
def test_an_upward_import_breaks_the_contract(
    tmp_path: Path, module: str, upward_import: str, contract: str
) -> None:
    tree = _copy_of_the_package(tmp_path)
    with (tree / "aether_django" / module).open("a") as f:
        f.write("\n" + upward_import)
    result = _lint_imports(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    broken = [line for line in result.stdout.splitlines() if " BROKEN" in line]
    assert any(line.startswith(contract) for line in broken), result.stdout
