"""Reading a unit file back the way systemd reads it.

The tests use this to prove that a rendered unit holds exactly the directives labctl
wrote and that each value decodes to what the inventory said; systemd-analyze verify
then checks the same files with systemd's own parser. It follows systemd 252's
conf-parser.c and extract-word.c for everything labctl writes:

- lines end at ``\\n``, ``\\r`` and NUL; a line ending in ``\\`` is joined to the next one
  (the backslash becomes a space); comment lines (``#``, ``;``) are skipped;
- ``Key=value`` with both sides stripped of whitespace;
- specifiers: ``%%`` is ``%``; any other ``%x`` is reported (systemd would expand it);
- command lines and ``Environment=`` split into words with quotes and C escapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_EOL = re.compile(r"\r\n|[\n\r\x00]")
WHITESPACE = " \t\n\r"


class UnitSyntax(ValueError):
    """Text systemd would read differently from plain data (a stray specifier, a bad escape)."""


@dataclass(frozen=True)
class Directive:
    section: str
    key: str
    value: str  # raw, as systemd sees it before per-directive decoding
    line: int


def directives(text: str) -> list[Directive]:
    out: list[Directive] = []
    section = ""
    pending = ""
    pending_line = 0
    for number, raw in enumerate(_EOL.split(text), start=1):
        if not pending and raw.lstrip(WHITESPACE)[:1] in ("#", ";"):
            continue
        if pending and raw.lstrip(WHITESPACE)[:1] in ("#", ";"):
            continue  # systemd skips comment lines inside a continuation
        if raw.endswith("\\"):
            if not pending:
                pending_line = number
            pending += raw[:-1] + " "
            continue
        line = pending + raw
        start = pending_line if pending else number
        pending = ""
        stripped = line.strip(WHITESPACE)
        if not stripped:
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1]
            continue
        if "=" not in stripped:
            raise UnitSyntax(f"line {start}: not a Key=value assignment")
        key, value = stripped.split("=", 1)
        out.append(Directive(section, key.strip(WHITESPACE), value.strip(WHITESPACE), start))
    if pending:
        out.append(Directive(section, "(continuation)", pending, pending_line))
    return out


def unspecify(value: str) -> str:
    """Undo ``%%``; any other specifier means systemd would change the value."""
    out, i = [], 0
    while i < len(value):
        ch = value[i]
        if ch == "%":
            if value[i + 1:i + 2] == "%":
                out.append("%")
                i += 2
                continue
            raise UnitSyntax(f"specifier %{value[i + 1:i + 2]} would be expanded")
        out.append(ch)
        i += 1
    return "".join(out)


_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
                   "\\": "\\", '"': '"', "'": "'", "s": " "}


def _cunescape_one(text: str, i: int) -> tuple[str, int]:
    """The character for the escape at text[i] (just after the backslash), and the next index."""
    ch = text[i:i + 1]
    if ch in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[ch], i + 1
    if ch == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", text[i + 1:i + 3]):
        return chr(int(text[i + 1:i + 3], 16)), i + 3
    if ch == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 1:i + 5]):
        return chr(int(text[i + 1:i + 5], 16)), i + 5
    if ch == "U" and re.fullmatch(r"[0-9a-fA-F]{8}", text[i + 1:i + 9]):
        return chr(int(text[i + 1:i + 9], 16)), i + 9
    if re.fullmatch(r"[0-7]{3}", text[i:i + 3]):
        return chr(int(text[i:i + 3], 8)), i + 3
    raise UnitSyntax(f"invalid escape \\{ch}")


def words(value: str, *, command: bool = False) -> list[str]:
    """systemd's extract_first_word with EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE, repeatedly.
    With ``command``, an unquoted lone ``;`` (a second command) is an error."""
    out: list[str] = []
    i, n = 0, len(value)
    while True:
        while i < n and value[i] in WHITESPACE:
            i += 1
        if i >= n:
            return out
        if command and value[i] == ";" and (i + 1 == n or value[i + 1] in WHITESPACE):
            raise UnitSyntax("';' separates a second command")
        word: list[str] = []
        quote: str | None = None
        while i < n:
            ch = value[i]
            if quote:
                if ch == "\\":
                    decoded, i = _cunescape_one(value, i + 1)
                    word.append(decoded)
                    continue
                if ch == quote:
                    quote = None
                    i += 1
                    continue
                word.append(ch)
                i += 1
                continue
            if ch in WHITESPACE:
                break
            if ch in "\"'":
                quote = ch
                i += 1
                continue
            if ch == "\\":
                decoded, i = _cunescape_one(value, i + 1)
                word.append(decoded)
                continue
            word.append(ch)
            i += 1
        if quote:
            raise UnitSyntax("unbalanced quotes")
        out.append("".join(word))


def exec_argv(value: str) -> list[str]:
    """ExecStart=: specifiers, then words, then ``$$`` in the arguments (any other
    ``$NAME`` would expand); the program's path is taken as it is."""
    text = unspecify(value)
    if text[:1] in "-@:+!":
        raise UnitSyntax(f"command prefix {text[:1]!r}")
    argv = words(text, command=True)
    # The program's path is not substituted; its arguments are ($$ is a dollar).
    return argv[:1] + [_undollar(word) for word in argv[1:]]


def _undollar(word: str) -> str:
    out, i = [], 0
    while i < len(word):
        if word[i] == "$":
            if word[i + 1:i + 2] == "$":
                out.append("$")
                i += 2
                continue
            if re.match(r"\{?[A-Za-z_]", word[i + 1:]):
                raise UnitSyntax("a $VARIABLE would be expanded")
        out.append(word[i])
        i += 1
    return "".join(out)


def environment(value: str) -> dict[str, str]:
    """Environment=: words of ``KEY=value``, specifiers expanded after unquoting."""
    out: dict[str, str] = {}
    for word in words(value):
        word = unspecify(word)
        if "=" not in word:
            raise UnitSyntax("an Environment= word without '='")
        key, val = word.split("=", 1)
        out[key] = val
    return out


def plain(value: str) -> str:
    """Paths and free text: specifiers only."""
    return unspecify(value)
