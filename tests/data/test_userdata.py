"""Tests of loading user client directories and plain text files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedgpt.data import ClientText, load_client_dir, load_text_file
from fedgpt.errors import DataError

EXPECTED = "expected a JSON object with a string 'text' field, got"


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def records(*texts: str) -> list[str]:
    return [json.dumps({"text": t}) for t in texts]


def one_line(error: pytest.ExceptionInfo[DataError]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_load_client_dir_happy_path(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "bob" / "train.jsonl", records("b1", "b2", "b3", "b4", "b5"))
    write_jsonl(tmp_path / "alice" / "train.jsonl", [*records("a1"), "", "   ", *records("a2")])
    write_jsonl(tmp_path / "alice" / "test.jsonl", records("at1", "ünïcödé\nline"))
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "notes.txt").write_text("not a client")

    clients = load_client_dir(tmp_path)

    assert clients == [
        ClientText("alice", "a1\na2", "at1\nünïcödé\nline"),
        ClientText("bob", "b1\nb2\nb3\nb4", "b5"),  # no test.jsonl: ordered 80/20 split
    ]


def test_load_client_dir_train_fraction(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "c" / "train.jsonl", records(*"abcd"))
    assert load_client_dir(str(tmp_path), train_fraction=0.5) == [ClientText("c", "a\nb", "c\nd")]


def test_single_record_stays_in_train(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "c" / "train.jsonl", records("only"))
    assert load_client_dir(tmp_path) == [ClientText("c", "only", "")]


@pytest.mark.parametrize(
    ("line", "got"),
    [
        ('{"text": "ok"', "invalid JSON"),
        ("not json at all", "invalid JSON"),
        ('["text", "x"]', "list"),
        ('"just a string"', "str"),
        ("42", "int"),
        ("null", "NoneType"),
        ('{"txt": "typo"}', "without 'text'"),
        ('{"text": 5}', "'text' = 5"),
        ('{"text": null}', "'text' = null"),
        ('{"text": ["a"]}', "'text' = [\"a\"]"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, got: str) -> None:
    train = write_jsonl(tmp_path / "alice" / "train.jsonl", [*records("fine"), "", line])
    with pytest.raises(DataError) as error:
        load_client_dir(tmp_path)
    message = one_line(error)
    assert message.startswith(f"{train}:3: {EXPECTED} ")
    assert got in message


def test_malformed_test_file_is_named(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a" / "train.jsonl", records("x"))
    test = write_jsonl(tmp_path / "a" / "test.jsonl", ["{"])
    with pytest.raises(DataError) as error:
        load_client_dir(tmp_path)
    assert one_line(error).startswith(f"{test}:1: {EXPECTED} invalid JSON")


def test_invalid_utf8_line(tmp_path: Path) -> None:
    train = tmp_path / "a" / "train.jsonl"
    train.parent.mkdir()
    train.write_bytes(b'{"text": "ok"}\n{"text": "\xff\xfe"}\n')
    with pytest.raises(DataError) as error:
        load_client_dir(tmp_path)
    assert one_line(error).startswith(f"{train}:2: {EXPECTED}")


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DataError) as error:
        load_client_dir(missing)
    assert one_line(error) == f"{missing}: client directory does not exist"


def test_path_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "data.jsonl"
    file.write_text('{"text": "x"}\n')
    with pytest.raises(DataError) as error:
        load_client_dir(file)
    assert one_line(error).startswith(f"{file}: expected a directory")


def test_no_client_subdirectories(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(DataError) as error:
        load_client_dir(tmp_path)
    assert "found none" in one_line(error) and str(tmp_path) in str(error.value)


def test_client_without_train_file(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a" / "train.jsonl", records("x"))
    write_jsonl(tmp_path / "b" / "test.jsonl", records("y"))
    with pytest.raises(DataError) as error:
        load_client_dir(tmp_path)
    assert one_line(error) == f"{tmp_path / 'b'}: client directory has no train.jsonl"


def test_empty_train_file(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "a" / "train.jsonl", ["", "  "])
    with pytest.raises(DataError) as error:
        load_client_dir(tmp_path)
    assert one_line(error).startswith(f"{train}: expected at least one")


def test_load_text_file(tmp_path: Path) -> None:
    file = tmp_path / "sonnets.txt"
    file.write_text("Shall I compare thee\nto a summer's day?\n", encoding="utf-8")
    assert load_text_file(file) == ClientText(
        "sonnets", "", "Shall I compare thee\nto a summer's day?\n"
    )


def test_load_text_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(DataError) as error:
        load_text_file(missing)
    assert one_line(error) == f"{missing}: text file does not exist"

    with pytest.raises(DataError) as error:
        load_text_file(tmp_path)
    assert one_line(error) == f"{tmp_path}: expected a UTF-8 text file, found a directory"

    binary = tmp_path / "latin1.txt"
    binary.write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError) as error:
        load_text_file(binary)
    assert one_line(error).startswith(f"{binary}: expected UTF-8 text")
