"""The Shakespeare federated data set: one client per speaking role of a play.

This follows the Shakespeare benchmark of LEAF (Caldas et al. 2018, "LEAF: A Benchmark for
Federated Settings", arXiv:1812.01097): every (play, role) pair with enough text is one
client, its lines are the lines of all the role's speeches in order, and the first 80% of
them train while the last 20% test. The plays are the Project Gutenberg texts shipped in
``fedgpt/resources/shakespeare_plays.tar.xz``.

The Gutenberg texts come in several layouts, which :func:`parse_play` handles:

* a speech starts with a line holding the speaker's name, usually abbreviated and followed
  by a period (``Kent.``, ``Glou.``, ``KING HENRY.``, ``Lady Capulet.``); some plays write
  the name in capitals without the period (``THESEUS``), and a few put the first speech
  line on the same line as the name (``NORFOLK. I thank your Grace,``);
* speech lines may be indented; a speech ends at the next speaker or heading;
* stage directions stand in square brackets (a few open with ``{``), may span several
  lines or sit inside a speech line, and are sometimes left unclosed; unbracketed ones
  (``Enter ...``, ``Exit``) show up in a few plays;
* the title, the list of persons, act and scene headings, prologue/epilogue headings,
  ``SONG`` markers and ``THE END`` are not speech.

The poems in the archive (e.g. ``lovers_complaint``, ``rape_of_lucrece``) have no acts and
no speakers, so they give no speeches.
"""

from __future__ import annotations

import configparser
import functools
import io
import re
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import PurePosixPath

from fedgpt.data.clients import ClientText, client_from_lines
from fedgpt.errors import DataError

__all__ = [
    "Speech",
    "canonical_role",
    "load_plays",
    "parse_play",
    "play_titles",
    "resolve_abbreviations",
    "shakespeare_clients",
]

_ARCHIVE = "shakespeare_plays.tar.xz"
_SUFFIX = "_gut"

# --------------------------------------------------------------------------------------
# Reading the archive
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _archive_members() -> tuple[tuple[str, str], ...]:
    """(file name, UTF-8 text) of every regular file in the shipped archive."""
    data = files("fedgpt.resources").joinpath(_ARCHIVE).read_bytes()
    members = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:xz") as tar:
        for info in tar.getmembers():
            if not info.isfile():
                continue
            handle = tar.extractfile(info)
            if handle is None:
                continue
            text = handle.read().decode("utf-8", errors="replace")
            members.append((PurePosixPath(info.name).name, text))
    return tuple(sorted(members))


def load_plays() -> dict[str, str]:
    """Play key (file stem without ``_gut``, e.g. ``lear``) -> raw Gutenberg text.

    The archive is read once and cached; every call returns a fresh dict.
    """
    plays = {}
    for name, text in _archive_members():
        stem = PurePosixPath(name).stem
        if name.endswith(".txt") and stem.endswith(_SUFFIX):
            plays[stem[: -len(_SUFFIX)]] = text
    return plays


def play_titles() -> dict[str, str]:
    """Play key -> title (e.g. ``lear`` -> ``King Lear``), read from ``metadata.txt``.

    Only plays shipped in the archive are listed; a play without a title maps to its key.
    """
    meta = dict(_archive_members()).get("metadata.txt", "")
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read_string(meta)
    titles = {}
    for key in sorted(load_plays()):
        section = key + _SUFFIX
        titles[key] = parser.get(section, "title", fallback=key).strip() or key
    return titles


# --------------------------------------------------------------------------------------
# Parsing one play
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Speech:
    """One speech: the canonical role that speaks it and its lines, stripped."""

    play: str
    role: str
    lines: tuple[str, ...]


_OPEN = "[{"
_CLOSE = "]}"
_BRACKETS = re.compile(r"[\[\]{}]")

_ACT = re.compile(r"^act\s+([ivxlc]+|\d+|first|second|third|fourth|fifth)\b", re.I)
_SCENE = re.compile(r"^scene(\s+([ivxlc]+|\d+)\b|\s*[.:,-]|$)", re.I)
_FRAME = re.compile(r"^(the\s+)?(prologue|epilogue|induction)\.?$", re.I)
_END = re.compile(r"^(THE END|FINIS)\.?$")
_MARKER = re.compile(r"^((the\s+)?song\.?|threnos\.?|[ivxlc]+\.|[\W_]+)$", re.I)

_WORD = r"(?:[A-Z0-9][\w'\u2019-]*\.?|and|of|the|de|&c?\.?)"
_LABEL = re.compile(rf"^{_WORD}(?:,?\s+{_WORD}){{0,5}}$")
_INLINE_SPLIT = re.compile(r"\.\s+")
_LOWER = re.compile(r"[a-z]")
_LETTERS = re.compile(r"[A-Za-z]")

# Unbracketed stage directions. One that starts a line runs to the end of its paragraph
# ("Enter HOLOFERNES, ...", "Alarums.  Then enter again, ...", and in King Henry VI part 1
# "Here alarum; they are beaten back ..."); verse that merely starts with such a word
# ("Enter the city, ...", "Enter'd my house.", "Here sound retreat, ...") is kept. One
# that trails a speech line ("... I come.Exit Boy", "... confound all! Exit") is cut off.
_BARE_DIRECTION = re.compile(
    r"^(Enter|Re-enter|Exit|Exeunt)(\s+[A-Z]|\.?$)"
    r"|^(Alarum|Alarums|Flourish|Sennet|Dead March|Retreat)[.;]"
    r"|^Here (alarum|they fight|they skirmish|sound an|[A-Z]\w*'s men)\b"
)
_TRAILING_EXIT = re.compile(r"(?<=[.!?;:,])\s*(Exit|Exeunt)\b[\w ,.]*$")

_NAME = re.compile(r"\b[A-Z][A-Za-z'-]*")
_GROUP = re.compile(r"\bAND\b|&|,|^(ALL|BOTH|SOME)\b")


def _strip_directions(lines: Sequence[str]) -> list[tuple[str, bool]]:
    """Remove bracketed stage directions from ``lines``.

    Returns, per line, the text left and whether the line held (part of) a direction. A
    direction ends at its closing bracket or at a blank line; one opened after speech text
    and left unclosed ends with its line. A closing bracket with no opening one means the
    line began inside a direction (nested or mismatched brackets), so the text before it
    is dropped too.
    """
    out: list[tuple[str, bool]] = []
    depth = 0
    for line in lines:
        if not line.strip():
            depth = 0
            out.append(("", False))
            continue
        if not _BRACKETS.search(line):
            out.append(("", True) if depth else (line, False))
            continue
        had = depth > 0
        kept: list[str] = []
        opened_after_text = False
        for ch in line:
            if ch in _OPEN:
                if depth == 0 and "".join(kept).strip():
                    opened_after_text = True
                depth += 1
                had = True
            elif ch in _CLOSE:
                had = True
                if depth:
                    depth -= 1
                else:
                    kept.clear()
            elif depth == 0:
                kept.append(ch)
        if depth and opened_after_text:
            depth = 0
        out.append(("".join(kept), had))
    return out


def _is_heading(text: str) -> bool:
    return bool(_ACT.match(text) or _SCENE.match(text))


def _body_start(lines: Sequence[str]) -> int | None:
    """Index of the first act, prologue or induction heading; None for a poem."""
    for i, line in enumerate(lines):
        text = line.strip()
        frame = _FRAME.match(text)
        if _ACT.match(text) or (frame and frame.group(2).lower() != "epilogue"):
            return i
    return None


def canonical_role(label: str) -> str:
    """Upper-case ``label``, drop its trailing period and collapse runs of spaces."""
    return " ".join(label.upper().rstrip(".").split())


def _first_word_upper(label: str) -> bool:
    for word in label.split():
        letters = "".join(_LETTERS.findall(word))
        if letters:
            return len(letters) >= 2 and letters.isupper()
    return False


def _label_shape(text: str) -> bool:
    """Whether ``text`` is shaped like a speaker label (name words, period or capitals)."""
    if len(text) > 40 or not _LABEL.match(text) or _MARKER.match(text):
        return False
    if len(_LETTERS.findall(text)) < 2 or _is_heading(text) or _END.match(text):
        return False
    return text.endswith(".") or not _LOWER.search(text)


def _words(role: str) -> list[str]:
    return role.replace(".", " ").split()


def _extends(short: list[str], long: list[str]) -> bool:
    """Whether role words ``short`` abbreviate role words ``long`` (see :func:`parse_play`)."""
    k = len(short)
    if k == 0 or k != len(long) or short[:-1] != long[:-1]:
        return False
    last, word = short[-1], long[-1]
    rest = word[len(last) :]
    return word.startswith(last) and rest[:1].isalpha() and rest not in ("S", "ES")


def _contradicted(last: str, full: str, names: frozenset[str]) -> bool:
    """Whether the list of persons shows that ``last`` is not short for ``full``.

    It is when ``last`` is itself a listed name (``HELEN`` next to ``HELENUS``) or when a
    listed name starting with ``last`` does not start with ``full`` (``COR`` is short for
    ``CORDELIA`` or ``CORNWALL``, so it is not resolved to ``CORN``).
    """
    if last in names:
        return True
    return any(n.startswith(last) and not n.startswith(full) for n in names)


def resolve_abbreviations(roles: Iterable[str], names: Iterable[str] = ()) -> dict[str, str]:
    """Map each abbreviated role to the longer role of the same play it abbreviates.

    ``names`` are the capitalised words of the play's list of persons (upper-cased); they
    only ever prevent a mapping. Only single-speaker roles take part (not ``ALL``,
    ``BOTH``, ``SOME ...`` or names joined with ``AND``, ``&`` or commas). See
    :func:`parse_play` for the rule.
    """
    listed = frozenset(names)
    singles = sorted({r for r in roles if not _GROUP.search(r)})
    words = {r: _words(r) for r in singles}
    mapping: dict[str, str] = {}
    for short in singles:
        longer = [r for r in singles if r != short and _extends(words[short], words[r])]
        # keep the fullest forms only: "GLOU" with "GLOUC" and "GLOUCESTER" -> "GLOUCESTER"
        fullest = [r for r in longer if not any(_extends(words[r], words[o]) for o in longer)]
        if len(fullest) != 1:
            continue
        target = fullest[0]
        if not _contradicted(words[short][-1], words[target][-1], listed):
            mapping[short] = target
    return mapping


def parse_play(text: str, play: str) -> list[Speech]:
    """Split the Gutenberg ``text`` of a play into speeches, in order.

    Everything before the first act, prologue or induction heading (title, list of
    persons) is dropped, as are act/scene headings, stage directions, song markers and
    empty speeches; speech lines are stripped of surrounding whitespace.

    A speaker label is a line of capitalised name words (``Kent.``, ``1 Clown.``,
    ``Lady Capulet.``, ``MRS. PAGE.``) ending with a period, or written in capitals
    without one (``THESEUS``), whose label is attested in the play: at least once it
    starts a paragraph (follows a blank line, a stage direction or a heading) and is
    followed directly by a speech line (stage directions in between are skipped). A
    label inside a paragraph (a blank line missing before it) counts when a speech line
    follows it, or always in plays with capital labels; in mixed-case plays a lone
    ``Romeo.`` closing a speech is a vocative, not a label. Plays whose labels are mostly
    in capitals accept only labels whose first word is in capitals, so that a speech line
    such as ``Come hither, sir.`` or a location such as ``Westminster Abbey.`` is never a
    speaker; there a paragraph-opening capital line that is not a label and is not
    followed by speech (``THE ORDER OF THE CORONATION.``) is a heading. A line
    ``NAME. speech`` with a known capital ``NAME`` starts a speech on that line
    (``NORFOLK. I thank your Grace,``).

    Canonical role names are upper-cased, lose their trailing period and have runs of
    spaces collapsed (``Lady  Montague.`` -> ``LADY MONTAGUE``). Abbreviations are then
    resolved within the play: a role maps to a longer role of the play when both have the
    same number of words, all words but the last are equal, and the last word of the role
    is a proper prefix of the longer role's last word (``FAL`` -> ``FALSTAFF``,
    ``I PLAY`` -> ``I PLAYER``, ``AGAME`` -> ``AGAMEMNON``), provided exactly one such
    longer role exists (counting only the fullest forms: ``GLOU`` with ``GLOUC`` and
    ``GLOUCESTER`` goes to ``GLOUCESTER``). It is never merged when the longer word is
    its plural (``SOLDIER``/``SOLDIERS``) or possessive (``LUCIUS``/``LUCIUS'``), for
    group roles (``ALL``, ``BOTH``, ``A AND B``), or when the list of persons contradicts
    it: the short word is itself a listed name (``HELEN`` and ``HELENUS`` are two
    persons) or a listed name starting with it does not start with the longer word
    (King Lear's ``Cor.`` may be Cordelia, so it is not merged into ``Corn.``). A role
    with no longer form stays as it is (``Glou.`` in King Lear gives ``GLOU``).
    """
    lines = text.splitlines()
    start = _body_start(lines)
    if start is None:
        return []
    cleaned = _strip_directions(lines[start:])
    texts = [t.strip() for t, _ in cleaned]
    n = len(texts)
    # lines that neither speak nor end a paragraph: direction-only lines and markers
    silent = [
        (had and not t) or bool(t and _MARKER.match(t))
        for t, (_, had) in zip(texts, cleaned, strict=True)
    ]

    def followed(i: int) -> bool:
        """Whether the next line that is not a direction or marker holds text."""
        j = i + 1
        while j < n and silent[j]:
            j += 1
        return j < n and bool(texts[j])

    def para_start(i: int) -> bool:
        prev = texts[i - 1] if i else ""
        return not prev or silent[i - 1] or _is_heading(prev)

    shaped = [bool(t) and _label_shape(t) for t in texts]
    firsts = [i for i in range(n) if shaped[i] and para_start(i)]
    caps_style = 2 * sum(_first_word_upper(texts[i]) for i in firsts) >= len(firsts)
    if caps_style:
        shaped = [ok and _first_word_upper(t) for ok, t in zip(shaped, texts, strict=True)]
    # roles attested by a label at a paragraph start directly followed by speech
    known = {canonical_role(texts[i]) for i in firsts if shaped[i] and followed(i)}

    def is_label(i: int) -> bool:
        if not shaped[i] or canonical_role(texts[i]) not in known:
            return False
        if not (para_start(i) or followed(i) or caps_style):
            return False
        inline = _inline_label(texts[i], known)
        return inline is None or not _LOWER.search(inline[1])

    speeches: list[tuple[str, list[str]]] = []
    speaker: str | None = None
    current: list[str] = []

    def flush() -> None:
        nonlocal current
        if speaker is not None and current:
            speeches.append((speaker, current))
        current = []

    in_direction = False
    for i, t in enumerate(texts):
        if not t or silent[i]:
            if not silent[i]:  # a blank line ends the paragraph
                in_direction = False
            continue
        if _END.match(t):
            break
        if _is_heading(t) or (_FRAME.match(t) and not followed(i)):
            flush()
            speaker = None
            continue
        if is_label(i):
            flush()
            speaker, in_direction = canonical_role(t), False
            continue
        inline = _inline_label(t, known)
        if inline is not None:
            flush()
            speaker, t = inline
        elif caps_style and shaped[i] and para_start(i) and not followed(i):
            # a heading in capitals such as "THE ORDER OF THE CORONATION."
            flush()
            speaker = None
            continue
        in_direction = in_direction or bool(_BARE_DIRECTION.match(t))
        if speaker is None or in_direction:
            continue
        t = _TRAILING_EXIT.sub("", t).rstrip()
        if t:
            current.append(t)
    flush()

    names = _NAME.findall("\n".join(lines[:start]))
    mapping = resolve_abbreviations((role for role, _ in speeches), (n.upper() for n in names))
    return [Speech(play, mapping.get(role, role), tuple(body)) for role, body in speeches]


def _inline_label(text: str, known: set[str] | frozenset[str]) -> tuple[str, str] | None:
    """(role, rest) when ``text`` is ``"NAME. speech"`` with a known capital ``NAME``."""
    for match in _INLINE_SPLIT.finditer(text, 0, 45):
        name = text[: match.start()]
        if _LOWER.search(name):
            return None
        role = canonical_role(name)
        if role in known:
            return role, text[match.end() :]
    return None


# --------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------


@functools.cache
def _play_speeches(play: str) -> tuple[Speech, ...]:
    return _parsed()[play]


@functools.lru_cache(maxsize=1)
def _parsed() -> dict[str, tuple[Speech, ...]]:
    """Every play's speeches: parsed (about 2 s for the 37 plays), or read back from the
    per-user cache (``$FEDGPT_HOME/cache``) under the SHA-256 of the shipped archive and of
    this parser's source, so a changed archive or parser is parsed afresh. A cache that is
    missing, unreadable or unwritable only costs the parse."""
    import hashlib
    import json
    import os
    from pathlib import Path

    from fedgpt.files import fedgpt_home

    h = hashlib.sha256(files("fedgpt.resources").joinpath(_ARCHIVE).read_bytes())
    h.update(Path(__file__).read_bytes())
    path = fedgpt_home() / "cache" / f"shakespeare-{h.hexdigest()[:32]}.json"
    try:
        rows = json.loads(path.read_text())
        return {p: tuple(Speech(p, r, tuple(ls)) for r, ls in v) for p, v in rows.items()}
    except (OSError, ValueError, TypeError):
        pass
    parsed = {p: tuple(parse_play(text, p)) for p, text in load_plays().items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        rows = {p: [[s.role, list(s.lines)] for s in v] for p, v in parsed.items()}
        tmp.write_text(json.dumps(rows))
        os.replace(tmp, path)
    except OSError:
        pass
    return parsed


def _check_names(names: Iterable[str], valid: Sequence[str], what: str) -> None:
    for name in names:
        if name not in valid:
            raise DataError(f"unknown play {name!r} in {what}; valid plays: {', '.join(valid)}")


def shakespeare_clients(
    min_chars: int = 2000,
    train_fraction: float = 0.8,
    plays: Sequence[str] | None = None,
    exclude_plays: Sequence[str] = (),
) -> list[ClientText]:
    """One client per (play, role), id ``"<play>/<ROLE>"`` (e.g. ``lear/KENT``).

    A client's lines are the lines of all the role's speeches in order, split with
    :func:`~fedgpt.data.clients.split_lines`. Roles with fewer than ``min_chars``
    characters (train and test together) are dropped. ``plays`` restricts the plays used
    (default: all), ``exclude_plays`` removes some; an unknown name raises
    :class:`~fedgpt.errors.DataError`. Clients are sorted by id.
    """
    valid = sorted(load_plays())
    if isinstance(plays, str) or isinstance(exclude_plays, str):
        raise DataError("plays and exclude_plays must be lists of play names, not a string")
    if plays is not None:
        _check_names(plays, valid, "data.plays")
    _check_names(exclude_plays, valid, "data.exclude_plays")
    chosen = sorted(set(valid if plays is None else plays) - set(exclude_plays))

    clients = []
    for play in chosen:
        by_role: dict[str, list[str]] = {}
        for speech in _play_speeches(play):
            by_role.setdefault(speech.role, []).extend(speech.lines)
        for role, lines in by_role.items():
            client = client_from_lines(f"{play}/{role}", lines, train_fraction)
            if client.num_chars >= min_chars:
                clients.append(client)
    return sorted(clients, key=lambda c: c.client_id)
