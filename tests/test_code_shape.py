"""Checks on the code itself: strict typing, and the direction of imports.

``importer`` is the data path shared by every face; it must not know about the public face
(``cdi``), Kubernetes, or the upload proxy and cloner that build on it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_IMPORTER = ("cdi", "kubernetes", "uploadproxy", "cloner", "tests")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_importer_does_not_import_its_users() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_modules(path) & set(FORBIDDEN_IN_IMPORTER))
        for path in (ROOT / "importer").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_cloner_and_upload_server_do_not_import_each_other() -> None:
    """They share :mod:`importer` (the clone stream's frames live in importer.clonewire)."""
    pairs = (("cloner", "uploadproxy"), ("uploadproxy", "cloner"))
    offenders = {str(path.relative_to(ROOT)) for package, other in pairs
                 for path in (ROOT / package).rglob("*.py") if other in imported_modules(path)}
    assert offenders == set()


def test_mypy_strict() -> None:
    proc = subprocess.run([sys.executable, "-m", "mypy", "cdi", "importer", "kubeenv", "uploadproxy", "cloner"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_unused_or_undefined_names() -> None:
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "F,E9", "--line-length", "120",
                           "cdi", "importer", "kubeenv", "uploadproxy", "cloner", "tests", "bench"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
