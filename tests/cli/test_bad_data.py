"""The corpus of bad data folders (``data.source = "dir"``): each exits 2 with one line
naming the folder or file (and line), and writes nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedgpt.cli.main import app

GOOD = {"text": "To be, or not to be, that is the question. " * 4}


def client(root: Path, name: str, train=None, test=None) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    lines = [GOOD] * 6 if train is None else train
    if isinstance(lines, bytes):
        (d / "train.jsonl").write_bytes(lines)
    else:
        (d / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if test is not None:
        (d / "test.jsonl").write_bytes(test if isinstance(test, bytes) else test.encode())
    return d


def two_good(root: Path) -> None:
    client(root, "alice")
    client(root, "bob")


def raw_train(text: bytes):
    def make(root: Path) -> None:
        two_good(root)
        (root / "bob" / "train.jsonl").write_bytes(text)

    return make


def raw_test(text: bytes):
    def make(root: Path) -> None:
        two_good(root)
        (root / "bob" / "test.jsonl").write_bytes(text)

    return make


def missing(root: Path) -> None:
    root.rmdir()


def a_file(root: Path) -> None:
    root.rmdir()
    root.write_text("not a folder")


def empty(root: Path) -> None:
    pass


def only_hidden(root: Path) -> None:
    client(root, ".hidden")


def no_train(root: Path) -> None:
    two_good(root)
    (root / "bob" / "train.jsonl").unlink()


def train_is_a_folder(root: Path) -> None:
    two_good(root)
    (root / "bob" / "train.jsonl").unlink()
    (root / "bob" / "train.jsonl").mkdir()


def _testjsonl_is_a_folder(root: Path) -> None:
    two_good(root)
    (root / "bob" / "test.jsonl").mkdir()


def _testjsonl_is_dev_zero(root: Path) -> None:
    two_good(root)
    (root / "bob" / "test.jsonl").symlink_to("/dev/zero")


def train_is_dev_zero(root: Path) -> None:
    two_good(root)
    (root / "bob" / "train.jsonl").unlink()
    (root / "bob" / "train.jsonl").symlink_to("/dev/zero")


def _testjsonl_is_a_fifo(root: Path) -> None:
    two_good(root)
    os.mkfifo(root / "bob" / "test.jsonl")


def dangling_link(root: Path) -> None:
    two_good(root)
    (root / "bob" / "test.jsonl").symlink_to(root / "nowhere.jsonl")


def link_loop(root: Path) -> None:
    two_good(root)
    (root / "bob" / "test.jsonl").symlink_to(root / "bob" / "test.jsonl")


def name_not_utf8(root: Path) -> None:
    two_good(root)
    os.rename(root / "bob", os.path.join(os.fsencode(root), b"b\xffb"))


def every_client_one_character(root: Path) -> None:
    client(root, "alice", [{"text": "a"}])
    client(root, "bob", [{"text": "b"}])


def no_test_text_anywhere(root: Path) -> None:
    client(root, "alice", [GOOD], "")
    client(root, "bob", [GOOD], "")


CASES = {
    "folder missing": (missing, "does not exist"),
    "folder is a file": (a_file, "expected a folder"),
    "no client folders": (empty, "found none"),
    "only hidden folders": (only_hidden, "found none"),
    "a client without train.jsonl": (no_train, "no train.jsonl"),
    "train.jsonl is a folder": (train_is_a_folder, "train.jsonl"),
    "empty train.jsonl": (raw_train(b""), "found none"),
    "blank lines only": (raw_train(b"\n\n  \n"), "found none"),
    "not JSON": (raw_train(b"hello\n"), "bob/train.jsonl:1"),
    "JSON but a list": (raw_train(b"[1, 2]\n"), "bob/train.jsonl:1"),
    "an object without text": (raw_train(b'{"body": "x"}\n'), "without 'text'"),
    "text is a number": (raw_train(b'{"text": 3}\n'), "'text' = 3"),
    "text is null": (raw_train(b'{"text": null}\n'), "'text' = null"),
    "bytes that are not UTF-8": (raw_train(b'{"text": "\xff\xfe"}\n'), "not UTF-8"),
    "a lone surrogate": (raw_train(b'{"text": "a\\ud800b"}\n'), "surrogate"),
    "JSON nested 100,000 deep": (raw_train(b"[" * 100_000 + b"]" * 100_000 + b"\n"), "nested"),
    "a torn second line": (raw_train(json.dumps(GOOD).encode() + b'\n{"text": "ab'), ":2"),
    "test.jsonl not JSON": (raw_test(b"{oops}\n"), "bob/test.jsonl:1"),
    "test.jsonl a lone surrogate": (raw_test(b'{"text": "\\udfff"}\n'), "surrogate"),
    "test.jsonl is a folder": (_testjsonl_is_a_folder, "test.jsonl"),
    "test.jsonl links to /dev/zero": (_testjsonl_is_dev_zero, "not a regular file"),
    "train.jsonl links to /dev/zero": (train_is_dev_zero, "train.jsonl"),
    "test.jsonl is a FIFO": (_testjsonl_is_a_fifo, "not a regular file"),
    "test.jsonl a dangling link": (dangling_link, "test.jsonl"),
    "test.jsonl a link to itself": (link_loop, "test.jsonl"),
    "a client folder name that is not UTF-8": (name_not_utf8, "UTF-8"),
    "one character of text per client": (every_client_one_character, "too short"),
    "no client has any test text": (no_test_text_anywhere, "test text"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_data_folder_exits_2_in_one_line_and_writes_nothing(name, tmp_path):
    make, needle = CASES[name]
    root = tmp_path / "data"
    root.mkdir()
    make(root)
    out_dir = tmp_path / "runs"
    res = CliRunner().invoke(
        app,
        ["run", "--no-baselines", "--set", 'data.source="dir"', "--set", f'data.path="{root}"',
         "--set", f'out_dir="{out_dir}"', "--set", "federation.rounds=1",
         "--set", "model.context=64", "--set", "client.seq_len=32"],
    )  # fmt: skip
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert res.output.count("\n") == 1 and res.output.startswith("error: "), res.output
    assert needle in res.output, res.output
    assert not out_dir.exists()


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 25
