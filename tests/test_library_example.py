"""The README's library example, run exactly as written: a plain ``nn.Module`` on
in-memory data, with an aggregator registered from outside the package."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def example() -> str:
    text = README.read_text()
    m = re.search(r"<!-- library-example -->\n```python\n(.*?)```", text, re.S)
    assert m, "README lost its library example"
    return m.group(1)


def test_readme_library_example_runs_as_written(tmp_path):
    code = example()
    assert len([x for x in code.splitlines() if x.strip()]) <= 13
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "notes"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["participants"] == ["hospital-a", "hospital-b"] for r in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]  # it learns
    assert 'kind = "half_mean"' in (run / "config.toml").read_text()  # the user's own rule
    assert "test_accuracy" in res.stdout
    from fedgpt.federation.verify import verify_run

    assert verify_run(run).ok
