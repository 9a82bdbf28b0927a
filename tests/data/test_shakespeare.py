"""Tests of the Shakespeare play parser, the ordered split and the per-role clients."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedgpt.data import (
    ClientText,
    Speech,
    client_from_lines,
    load_plays,
    parse_play,
    play_titles,
    shakespeare_clients,
    split_lines,
)
from fedgpt.errors import DataError

POEMS = {"lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece"}

# Number of (play, role) clients with at least 2000 characters over all 38 texts. It pins
# the parser's output: a change here means speeches moved between roles or were lost.
CLIENTS_AT_2000_CHARS = 406


@pytest.fixture(scope="module")
def plays() -> dict[str, str]:
    return load_plays()


@pytest.fixture(scope="module")
def parsed(plays: dict[str, str]) -> dict[str, list[Speech]]:
    return {key: parse_play(text, key) for key, text in plays.items()}


# ---------------------------------------------------------------------------------------
# Resources
# ---------------------------------------------------------------------------------------


def test_load_plays_reads_all_texts(plays: dict[str, str]) -> None:
    assert len(plays) == 38
    assert POEMS <= set(plays)
    assert plays["lear"].startswith("THE TRAGEDY OF KING LEAR")
    assert load_plays() is not load_plays()  # a fresh dict on each call


def test_play_titles() -> None:
    titles = play_titles()
    assert set(titles) == set(load_plays())
    assert titles["lear"] == "King Lear"
    assert titles["midsummer_nights_dream"] == "A Midsummer Night's Dream"


# ---------------------------------------------------------------------------------------
# Parsing real plays
# ---------------------------------------------------------------------------------------


def test_lear_opening_speeches(parsed: dict[str, list[Speech]]) -> None:
    lear = parsed["lear"]
    assert lear[0] == Speech(
        "lear",
        "KENT",
        ("I thought the King had more affected the Duke of Albany than", "Cornwall."),
    )
    assert lear[1].role.startswith("GLOU")
    assert lear[1].lines[0] == "It did always seem so to us; but now, in the division of the"
    assert [s.role for s in lear[2:6]] == ["KENT", lear[1].role, "KENT", lear[1].role]


def test_lear_speech_lookup_by_text(parsed: dict[str, list[Speech]]) -> None:
    by_first_line = {s.lines[0]: s.role for s in parsed["lear"]}
    assert by_first_line["I thought the King had more affected the Duke of Albany than"] == "KENT"
    assert by_first_line["It did always seem so to us; but now, in the division of the"] == "GLOU"
    # Lear's speech keeps its second line although "Gloster." looks like a label
    lear_speech = next(s for s in parsed["lear"] if s.role == "LEAR")
    assert lear_speech.lines == ("Attend the lords of France and Burgundy,", "Gloster.")
    # "Cor." (Cordelia) and "Corn." (Cornwall) stay apart: the persons list has both names
    roles = {s.role for s in parsed["lear"]}
    assert {"LEAR", "KENT", "GLOU", "EDG", "EDM", "FOOL", "COR", "CORN", "GON", "REG"} <= roles


_DIRECTION = re.compile(
    r"[\[\]{}]|\b(Exit|Exeunt|Re-enter)\b|^(Enter|Exit|Exeunt)(\s+[A-Z]|\.?$)"
    r"|^(Alarum|Alarums|Flourish|Sennet)[.;]"
)
_HEADING = re.compile(
    r"^(ACT|SCENE|Scene|Act)\b|^(THE )?(PROLOGUE|EPILOGUE|INDUCTION)\.?$|^THE END$"
    r"|^(DRAMATIS PERSONAE|PERSONS REPRESENTED)"
)


def test_no_stage_direction_or_heading_leaks(parsed: dict[str, list[Speech]]) -> None:
    leaks = [
        (key, s.role, line)
        for key, speeches in parsed.items()
        for s in speeches
        for line in s.lines
        if _DIRECTION.search(line) or _HEADING.match(line)
    ]
    assert leaks == []


def test_speech_lines_are_stripped_and_non_empty(parsed: dict[str, list[Speech]]) -> None:
    for speeches in parsed.values():
        for s in speeches:
            assert s.lines
            assert all(line and line == line.strip() for line in s.lines)


def test_poems_have_no_speeches(parsed: dict[str, list[Speech]]) -> None:
    for key in POEMS:
        assert parsed[key] == []


def test_every_play_has_plausible_roles(parsed: dict[str, list[Speech]]) -> None:
    for key, speeches in parsed.items():
        if key in POEMS:
            continue
        roles = {s.role for s in speeches}
        assert len(roles) >= 15, key
        for role in roles:
            assert role == role.upper() and role == " ".join(role.split()), (key, role)
            assert not role.endswith(".") and len(role.split()) <= 6, (key, role)
            # PROLOGUE is a speaker in the play within A Midsummer Night's Dream
            assert not _HEADING.match(role) or role == "PROLOGUE", (key, role)


def test_formats_without_period_and_inline_names(parsed: dict[str, list[Speech]]) -> None:
    # A Midsummer Night's Dream: capital names without a period, indented speech lines
    dream = parsed["midsummer_nights_dream"]
    assert dream[0].role == "THESEUS"
    assert dream[2].role == "THESEUS" and dream[2].lines[0] == "Go, Philostrate,"
    # King Henry VIII: "NORFOLK. I thank your Grace," starts a speech on the label's line
    henry = parsed["henry_viii"]
    assert henry[1].role == "NORFOLK" and henry[1].lines[0] == "I thank your Grace,"
    # King Henry IV, part 1: abbreviations with no full form stay as they are
    assert {"FAL", "HOT", "PRINCE"} <= {s.role for s in parsed["henry_iv_part_1"]}


# ---------------------------------------------------------------------------------------
# Parsing a synthetic play
# ---------------------------------------------------------------------------------------

SYNTHETIC = """\
THE TRAGEDY OF TESTING

by Nobody

Persons Represented.

Sir John Falstaff, a knight.
Duke of Gloucester.
Helen, a lady.  Helenus, a prince.
Cordelia.  Cornwall.

ACT I.

Scene I. A room.

[Enter Falstaff and Gloucester,
with Soldiers.]

FAL.
I am not only witty in myself, [Aside.] mark me,
but the cause that wit is in other men.

GLOUCESTER.
Well said.

FALSTAFF.
  Again, I say.

GLOU.
[Drinks.]
Enough.

[Exit Gloucester.]

FAL.
Alone now.

HELEN.
A word.

HELENUS.
Another.

COR.
Cordelia speaks.

CORN.
Cornwall speaks.

SOLDIER.
One.

SOLDIERS.
Many.

ALL.
Together.

ALL SOLDIERS.
Loudly.

THE END
"""


def test_synthetic_play_resolves_abbreviations() -> None:
    speeches = parse_play(SYNTHETIC, "test")
    assert [(s.role, s.lines) for s in speeches] == [
        (
            "FALSTAFF",
            ("I am not only witty in myself,  mark me,", "but the cause that wit is in other men."),
        ),
        ("GLOUCESTER", ("Well said.",)),
        ("FALSTAFF", ("Again, I say.",)),
        ("GLOUCESTER", ("Enough.",)),
        ("FALSTAFF", ("Alone now.",)),
        ("HELEN", ("A word.",)),  # a listed name of its own, not short for HELENUS
        ("HELENUS", ("Another.",)),
        ("COR", ("Cordelia speaks.",)),  # could be Cordelia or Cornwall: left alone
        ("CORN", ("Cornwall speaks.",)),
        ("SOLDIER", ("One.",)),  # a plural is a different role
        ("SOLDIERS", ("Many.",)),
        ("ALL", ("Together.",)),  # group roles are never merged
        ("ALL SOLDIERS", ("Loudly.",)),
    ]
    assert all(s.play == "test" for s in speeches)


def test_synthetic_play_mixed_case_labels_and_vocatives() -> None:
    text = """\
ACT I.

Scene I. A street.

Romeo.
Come hither,
Nurse.

Nurse.
My lord?
Romeo.
Nothing.

Lady  Capulet.
[Sings.]
  La la.

[Exeunt Romeo and Nurse.]

Good night.
"""
    speeches = parse_play(text, "t")
    assert [(s.role, s.lines) for s in speeches] == [
        # a known label closing a speech is a vocative, not a speaker
        ("ROMEO", ("Come hither,", "Nurse.")),
        ("NURSE", ("My lord?",)),
        # a known label inside a paragraph and followed by speech is a speaker
        ("ROMEO", ("Nothing.",)),
        # the speech goes on after a stage direction
        ("LADY CAPULET", ("La la.", "Good night.")),
    ]


def test_text_without_acts_gives_nothing() -> None:
    assert parse_play("A POEM\n\nRoses are red.\nViolets are blue.\n", "poem") == []


# ---------------------------------------------------------------------------------------
# Ordered split
# ---------------------------------------------------------------------------------------


@given(
    lines=st.lists(st.text(max_size=5), max_size=60),
    fraction=st.floats(min_value=0.0, max_value=1.0),
)
def test_split_lines_invariants(lines: list[str], fraction: float) -> None:
    train, test = split_lines(lines, fraction)
    assert train + test == lines  # everything kept, order preserved
    n = len(lines)
    if n == 0:
        assert train == [] and test == []
    else:
        assert len(train) == min(n, max(1, round(n * fraction)))
        if n * fraction >= 1:
            assert abs(len(train) - n * fraction) <= 0.5


def test_split_lines_examples() -> None:
    lines = [str(i) for i in range(10)]
    assert split_lines(lines) == (lines[:8], lines[8:])
    assert split_lines(["a"]) == (["a"], [])
    assert split_lines(["a", "b"], 0.0) == (["a"], ["b"])
    assert split_lines(lines, 1.0) == (lines, [])
    with pytest.raises(ValueError):
        split_lines(lines, 1.5)


def test_client_from_lines_joins_with_newlines() -> None:
    client = client_from_lines("p/R", ["a", "b", "c", "d", "e"])
    assert client == ClientText("p/R", "a\nb\nc\nd", "e")
    assert client.num_chars == len("a\nb\nc\nd") + 1


# ---------------------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------------------


def test_shakespeare_clients_default() -> None:
    clients = shakespeare_clients()
    assert len(clients) == CLIENTS_AT_2000_CHARS
    ids = [c.client_id for c in clients]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[a-z0-9_]+/[A-Z0-9 .,'&-]+", i) for i in ids)
    assert all(c.num_chars >= 2000 for c in clients)
    assert {i.split("/")[0] for i in ids}.isdisjoint(POEMS)
    kent = next(c for c in clients if c.client_id == "lear/KENT")
    assert kent.train.startswith("I thought the King had more affected the Duke of Albany than\n")


def test_client_lines_follow_the_split(parsed: dict[str, list[Speech]]) -> None:
    (kent,) = [c for c in shakespeare_clients(plays=["lear"]) if c.client_id == "lear/KENT"]
    lines = [line for s in parsed["lear"] if s.role == "KENT" for line in s.lines]
    train, test = split_lines(lines, 0.8)
    assert kent == ClientText("lear/KENT", "\n".join(train), "\n".join(test))


def test_min_chars_filters_roles() -> None:
    everyone = shakespeare_clients(min_chars=0, plays=["lear"])
    big = shakespeare_clients(min_chars=5000, plays=["lear"])
    assert {c.client_id for c in big} == {c.client_id for c in everyone if c.num_chars >= 5000}
    assert 0 < len(big) < len(everyone)
    assert "lear/DOCT" in {c.client_id for c in everyone}  # a one-line role


def test_play_selection() -> None:
    only = shakespeare_clients(plays=["lear", "hamlet"])
    assert {c.client_id.split("/")[0] for c in only} == {"lear", "hamlet"}
    rest = shakespeare_clients(exclude_plays=["lear"])
    assert len(rest) == CLIENTS_AT_2000_CHARS - len(shakespeare_clients(plays=["lear"]))
    assert not any(c.client_id.startswith("lear/") for c in rest)
    assert shakespeare_clients(plays=["lear"], exclude_plays=["lear"]) == []


@pytest.mark.parametrize(
    "kwargs",
    [{"plays": ["lear", "kinglear"]}, {"exclude_plays": ["kinglear"]}],
)
def test_unknown_play_names_raise(kwargs: dict) -> None:
    with pytest.raises(DataError) as info:
        shakespeare_clients(**kwargs)
    message = str(info.value)
    assert "'kinglear'" in message and "lear" in message and "\n" not in message
