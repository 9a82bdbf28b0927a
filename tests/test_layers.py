"""The layer order of docs/architecture.md, enforced with import-linter (``.importlinter``):
no import runs back up a layer, no algorithm module imports a runtime adapter, no
package's modules import each other in a cycle. A second check shows the contracts can
fail: a throw-away package with an upward import and a cycle is caught."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = str(Path(sys.executable).with_name("lint-imports"))


def lint(config: Path, cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    return subprocess.run(
        [LINT, str(config), "--no-cache"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_fedgpt_keeps_its_layers():
    res = lint(ROOT / ".importlinter", ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "3 kept, 0 broken" in res.stdout


def test_the_contracts_catch_an_upward_import_and_a_cycle(tmp_path):
    pkg = tmp_path / "toy"
    (pkg / "low").mkdir(parents=True)
    (pkg / "high").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("")
    (pkg / "high" / "__init__.py").write_text("")
    (pkg / "high" / "a.py").write_text("from toy.high import b\n")
    (pkg / "high" / "b.py").write_text("from toy.high import a\n")  # a cycle
    (pkg / "low" / "c.py").write_text("from toy.high import a\n")  # runs back up
    cfg = tmp_path / "contracts.ini"
    cfg.write_text(
        "[importlinter]\nroot_package = toy\n\n"
        "[importlinter:contract:layers]\nname = layers\ntype = layers\n"
        "layers =\n    toy.high\n    toy.low\n\n"
        "[importlinter:contract:no-cycles]\nname = No import cycles\n"
        "type = acyclic_siblings\nancestors =\n    toy\n"
    )
    res = lint(cfg, tmp_path, str(tmp_path))
    assert res.returncode == 1, res.stdout
    assert "toy.low.c -> toy.high.a" in res.stdout
    assert "No import cycles" in res.stdout and "BROKEN" in res.stdout
