"""Record the golden runs: ``python tests/golden/record.py [CASE ...]`` (default: all)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import ACCEPTED, GOLDEN, fingerprint, run_in_process  # noqa: E402


def main(names: list[str]) -> None:
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    for i, case in enumerate(names or sorted(ACCEPTED)):
        with tempfile.TemporaryDirectory() as tmp:
            golden[case] = fingerprint(run_in_process(case, Path(tmp)))
        print(f"{i + 1}/{len(names or ACCEPTED)} {case} {golden[case]['sha256'][:12]}", flush=True)
        GOLDEN.write_text(json.dumps(dict(sorted(golden.items())), indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
