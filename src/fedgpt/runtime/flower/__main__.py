"""``python -m fedgpt.runtime.flower app DIR``: write the FedGPT Flower App project (the
folder ``flwr run`` takes) to DIR."""

from __future__ import annotations

import sys

from fedgpt.runtime.flower.app_project import write_app


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "app":
        print("usage: python -m fedgpt.runtime.flower app DIR", file=sys.stderr)
        return 2
    out = write_app(argv[1])
    print(f"wrote the FedGPT Flower App to {out}; run it with: flwr run {out} <connection>")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
