"""Rewrite the TOML block of docs/configuration.md from the schema (run after changing it)."""

import re
from pathlib import Path

from fedgpt.config import RunConfig, to_toml

doc = Path(__file__).resolve().parent / "configuration.md"
text = doc.read_text()
block = "```toml\n" + to_toml(RunConfig(), comments=True) + "```"
doc.write_text(re.sub(r"```toml\n.*?```", lambda _: block, text, flags=re.S))
print(f"updated {doc}")
