"""Which characters may travel from an inventory into a rendered file; how text read from
files is shown on a terminal, and laid out there (folded, aligned, measured in cells).

systemd ends a unit-file line at ``\\n``, ``\\r`` and NUL; YAML also breaks lines at NEL
(U+0085), U+2028 and U+2029; terminals act on ESC and the other C0/C1 controls; bidi
overrides make text read differently from what it is. None of them has a use in an
inventory, so the loader refuses every string (key or value) that holds one, and each
renderer refuses them again (a renderer that meets one has a bug, see labctl.encode).
"""

from __future__ import annotations

import os
import re
import unicodedata

# Unicode categories refused outright: controls (C0, DEL, C1), lone surrogates (which a
# YAML "\\ud800" escape can produce and no UTF-8 file can hold), line and paragraph
# separators.
_REFUSED_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}
# Format characters that change how text reads: bidi embeddings/overrides/isolates, the
# byte-order mark, and the non-characters U+FFFE/U+FFFF.
_REFUSED_CHARS = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff\ufffe\uffff")


def is_unsafe(ch: str) -> bool:
    return ch in _REFUSED_CHARS or unicodedata.category(ch) in _REFUSED_CATEGORIES


def first_unsafe(value: str) -> tuple[int, str] | None:
    """(index, character) of the first character no rendered file may carry, or None."""
    if value.isprintable() and not (_REFUSED_CHARS & set(value)):
        return None  # the common case, in C
    for i, ch in enumerate(value):
        if is_unsafe(ch):
            return i, ch
    return None


def describe(ch: str) -> str:
    """``U+000D (CARRIAGE RETURN)``: names the character without printing it."""
    name = unicodedata.name(ch, "") or _CONTROL_NAMES.get(ord(ch)) or (
        "lone surrogate" if unicodedata.category(ch) == "Cs" else "control character")
    return f"U+{ord(ch):04X} ({name})"


_CONTROL_NAMES = {0x00: "NUL", 0x09: "TAB", 0x0A: "LINE FEED", 0x0B: "VERTICAL TAB", 0x0C: "FORM FEED",
                  0x0D: "CARRIAGE RETURN", 0x1B: "ESCAPE", 0x7F: "DELETE", 0x85: "NEXT LINE (NEL)"}


def unsafe_message(value: str, what: str = "") -> str | None:
    """The one-line refusal for ``value``, or None when it is clean. Never echoes the value
    (it may be a secret)."""
    found = first_unsafe(value)
    if found is None:
        return None
    index, ch = found
    where = f" at character {index + 1}" if len(value) > 1 else ""
    return (f"{what}contains {describe(ch)}{where}; control characters, line separators and "
            "bidi controls are not allowed in an inventory")


# --- showing text read from files on a terminal -------------------------------------

# Characters a terminal acts on instead of showing: C0 and C1 controls and DEL (escape
# sequences start with ESC or CSI), the line and paragraph separators, and the bidi
# embeddings, overrides, isolates and marks that reorder what is shown (Trojan Source).
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[\x00-\x1f\x7f-\x9f\u2028\u2029{_BIDI}\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(text: object) -> str:
    """``text`` made safe to print on a terminal: every control character (C0, C1, DEL),
    U+2028/U+2029, bidi control and lone surrogate (an undecodable byte in a file name)
    becomes a visible escape (``\\x1b``, ``\\u202e``); everything else is unchanged. For
    anything read from a file or a process: GGUF metadata, file names, journal lines.
    It does not touch rich markup: print the result with markup off, or as labctl.cli.tables.plain."""
    return _UNSAFE.sub(_escape, text if isinstance(text, str) else str(text))


# --- laying text out on a terminal: widths in cells ------------------------------------------

# What a terminal shows of a character is measured in cells, as rich measures it
# (rich.cells.cell_len): a CJK character or an emoji takes two, a combining mark none. Every
# line labctl folds or aligns for people is measured here (status, doctor, the tables, a
# fleet's columns, the GPU budget), and nowhere else.

_SPACES = {ord(ch): " " for ch in "\n\x0b\x0c\r"}  # the blanks textwrap reads as spaces, besides tabs
_CHUNKS = re.compile("( +)")  # words and the runs of spaces between them


def cell_width(text: str) -> int:
    """The terminal cells ``text`` takes (rich's measure; imported on first use)."""
    from rich.cells import cell_len

    return cell_len(text)


def pad(text: str, width: int) -> str:
    """``text`` filled with spaces to ``width`` cells (as it is when it is wider)."""
    return text + " " * max(width - cell_width(text), 0)


def fold(text: str, width: int, indent: str = "", more: str = "") -> list[str]:
    """``text`` in lines of at most ``width`` cells (20 at least), broken only at spaces:
    never inside a word, a path or a ``file:line``; a word longer than a line keeps a line
    of its own. ``indent`` starts the first line, ``more`` every other one.

    textwrap's greedy fill (``break_long_words=False, break_on_hyphens=False``: tabs
    expanded, other blanks read as spaces, spaces dropped where a line breaks), with each
    word measured in cells rather than characters."""
    width = max(width, 20)
    text = text.expandtabs().translate(_SPACES)
    # Words and runs of spaces, in order (last first, to pop).
    chunks = [c for c in _CHUNKS.split(text) if c]
    chunks.reverse()
    lines: list[str] = []
    while chunks:
        prefix = more if lines else indent
        room = width - cell_width(prefix)
        if lines and chunks[-1][0] == " ":  # a line after the first starts at a word
            chunks.pop()
        line: list[str] = []
        used = 0
        while chunks and used + cell_width(chunks[-1]) <= room:
            used += cell_width(chunks[-1])
            line.append(chunks.pop())
        if chunks and not line and cell_width(chunks[-1]) > room:
            line.append(chunks.pop())  # a word longer than a line: a line of its own, whole
        if line and line[-1][0] == " ":
            line.pop()
        if line:
            lines.append(prefix + "".join(line))
    return lines or [indent.rstrip()]


def terminal_width() -> int:
    """The width labctl lays its lines out for, and gives rich's Console (labctl.cli):
    ``$COLUMNS``; else 80 on a dumb terminal; else the size of the first of stdin, stdout
    and stderr that is a terminal; else (piped) 80."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit():
        return int(columns)
    if os.environ.get("TERM", "").lower() in ("dumb", "unknown"):
        return 80
    for fd in (0, 1, 2):
        try:
            return os.get_terminal_size(fd).columns or 80
        except OSError:
            continue
    return 80
