"""The layout's rules (docs/architecture.md): import-linter's contracts hold (layers, no cycles, only api.py
speaks HTTP or Socket.IO, ml stands alone), and no application module or class outgrows what one reader
holds in their head."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("server", "signaling", "media", "devices", "ml")
MAX_MODULE, MAX_CLASS = 500, 300


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_import_contracts_hold() -> None:
    done = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:]


def test_no_module_over_500_lines_nor_class_over_300() -> None:
    too_big = []
    for path in _modules():
        text = path.read_text()
        if (lines := len(text.splitlines())) > MAX_MODULE:
            too_big.append(f"{path.relative_to(ROOT)}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and (size := node.end_lineno - node.lineno + 1) > MAX_CLASS:
                too_big.append(f"{path.relative_to(ROOT)}: class {node.name} {size} lines")
    assert too_big == []
