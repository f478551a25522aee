"""The one place that decides how a value is written into a rendered file.

Every value a template prints goes through one of these encoders, per destination, and
comes out as :class:`Encoded`; the Jinja environment (labctl.render.templates) refuses anything
else, so no template can interpolate a raw value.

systemd unit files (systemd.syntax(7), systemd.service(5)):

- a line ends at ``\\n``, ``\\r`` or NUL, and a line ending in ``\\`` continues onto the
  next one; leading and trailing whitespace of a value is dropped;
- ``%`` starts a specifier in almost every directive (``%h`` is the home directory, an
  unknown one makes the unit fail to load): written as ``%%``;
- command lines (``ExecStart=``) are split into words with C-style escapes and quotes,
  ``$NAME``/``${NAME}`` expand from the environment (``$$`` is a dollar), and a lone ``;``
  separates commands;
- ``Environment=`` is one quoted word per assignment (escapes apply, ``$`` does not);
- paths (``WorkingDirectory=``, ``EnvironmentFile=``) and free text (``Description=``) are
  taken as they are, after specifiers: nothing can quote a trailing ``\\`` or edge spaces,
  so such values are refused (at load time by the inventory schema, which calls the
  ``*_problem`` functions here, and again here); a path that is not normalised is ignored
  (``..``) or rewritten, so only normalised absolute paths are written;
- ``EnvironmentFile=`` is a wildcard pattern: systemd expands it with glob(3)
  (exec_context_load_environment), where ``*``, ``?``, ``[`` and the escape ``\\`` are
  special, so a path holding one names other files, or none (:data:`SD_GLOB`).

redis-server's config files (:func:`redis_path`): Redis 7 globs a config file's path that
holds ``*``, ``?`` or ``[`` (the one on its argv and every ``include``), and skips a pattern
that matches nothing without a word: the include that sets ``requirepass`` would be dropped.

YAML (compose, Prometheus, Grafana provisioning, the LiteLLM config): scalars are written
double-quoted with every character that could end a line (NEL, U+2028, U+2029, CR...)
escaped; compose files also interpolate ``$VAR``, so ``$`` is written ``$$`` there.
Comments are refused any line break.

A value reaching an encoder that breaks these rules is a labctl bug (the schema refuses
such input first): :class:`EncodeError` is raised and nothing is written.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Iterable

import yaml

from labctl.text import first_unsafe, is_unsafe


class Encoded(str):
    """Text already encoded for its destination: the only kind a template may print."""


class EncodeError(ValueError):
    """A value that cannot be written faithfully reached a renderer (a labctl bug)."""


def _refuse_unsafe(value: str, where: str) -> None:
    found = first_unsafe(value)
    if found is not None:
        raise EncodeError(f"{where}: value holds U+{ord(found[1]):04X}, which no rendered file may carry")


# --- systemd -------------------------------------------------------------------------

# Characters that force an Exec word into double quotes: whitespace, quotes, escapes, and
# the ';' command separator.
_EXEC_QUOTE = set(" \t\"'\\;")


def exec_word(word: str, *, program: bool = False) -> str:
    """One ExecStart= word. ``$`` is doubled in arguments, where systemd substitutes
    ``$NAME``; the program's path is never substituted, so there it stays as it is."""
    _refuse_unsafe(word, "ExecStart")
    word = word.replace("%", "%%")
    if not program:
        word = word.replace("$", "$$")
    if word and not (_EXEC_QUOTE & set(word)):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sd_exec(argv: Iterable[str]) -> Encoded:
    """A command line for ExecStart=: each word reads back as itself, and the first word is
    the executable's absolute path (no ``-@:+!`` prefix can be smuggled in; systemd refuses
    quotes and backslashes in it)."""
    words = list(argv)
    if not words or not words[0].startswith("/"):
        raise EncodeError("ExecStart: the executable must be an absolute path")
    if set(words[0]) & set("\"'\\"):
        raise EncodeError("ExecStart: systemd refuses quotes and backslashes in the executable's path")
    return Encoded(" ".join([exec_word(words[0], program=True), *(exec_word(w) for w in words[1:])]))


def sd_assign(key: str, value: str) -> Encoded:
    """``"KEY=value"`` for Environment=: one quoted word; specifiers apply here, ``$`` does not."""
    _refuse_unsafe(key + value, "Environment")
    text = f"{key}={value}".replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
    return Encoded(f'"{text}"')


def sd_text_problem(value: str) -> str | None:
    """Why ``value`` cannot be a free-text or path value in a unit file, or None."""
    if first_unsafe(value) is not None:
        return "holds a control character"
    if value != value.strip(" \t"):
        return "must not start or end with whitespace (systemd drops it)"
    if value.endswith("\\"):
        return "must not end with a backslash (systemd reads it as a line continuation)"
    return None


def sd_text(value: str) -> Encoded:
    """Free text (Description=): specifiers escaped, nothing else changes."""
    problem = sd_text_problem(value)
    if problem:
        raise EncodeError(f"unit text {problem}")
    return Encoded(value.replace("%", "%%"))


def path_problem(value: str) -> str | None:
    """Why ``value`` is not an absolute, normalised path (no ``//``, ``/./``, ``..`` or
    trailing ``/``: systemd ignores a path with ``..`` and rewrites the rest), or None."""
    if not value.startswith("/"):
        return "must be absolute"
    if value != "/" and any(part in ("", ".", "..") for part in value[1:].split("/")):
        return "must be normalised (no //, /./, /../ or trailing /)"
    return None


def sd_path(value: str) -> Encoded:
    """A path directive (WorkingDirectory=): absolute, normalised, specifiers escaped."""
    problem = sd_text_problem(value) or path_problem(value)
    if problem:
        raise EncodeError(f"unit path {problem}")
    return Encoded(value.replace("%", "%%"))


# glob(3)'s metacharacters, flags 0 (systemd's safe_glob): "\\" escapes the next character.
SD_GLOB = frozenset("*?[\\")


def sd_env_file(value: str) -> Encoded:
    """An EnvironmentFile= path: sd_path's rules, and no glob(3) metacharacter, since systemd
    loads every file the path matches as a pattern (and fails the start when none does)."""
    if SD_GLOB & set(value):
        raise EncodeError("EnvironmentFile: a path with *, ?, [ or \\ is a wildcard pattern to systemd")
    return sd_path(value)


# What a path in a path list may not hold: systemd splits the list at whitespace and reads
# quotes and backslashes as quoting, so such a path cannot be written faithfully.
PATH_WORD_UNSAFE = set(" \t\"'\\")


def sd_path_word(value: str) -> Encoded:
    """One path of a space-separated path list (ReadWritePaths=): specifiers escaped. The
    inventory checks refuse a path with whitespace, quotes or backslashes there."""
    problem = sd_text_problem(value) or path_problem(value)
    if problem or PATH_WORD_UNSAFE & set(value):
        raise EncodeError(f"unit path list: {problem or 'a path must be without whitespace, quotes or backslashes'}")
    return Encoded(value.replace("%", "%%"))


def sd_comment(value: str) -> Encoded:
    """A ``#`` comment line's text (systemd expands nothing in comments)."""
    _refuse_unsafe(value, "unit comment")
    return Encoded(value)


# --- sizes (MemoryMax=, MemoryHigh=, Redis's maxmemory) --------------------------------

SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
# systemd parses a size into 64 bits and reads 2^64-1 as "infinity": a MemoryMax= of that or
# more is ignored with a warning. Redis wraps a maxmemory past 64 bits to 0, which is no limit.
SIZE_MAX = 2**64 - 2


def size_bytes(size: str) -> int:
    """The bytes of a size as the inventory writes it: a number, optionally K, M, G or T
    (powers of 1024, as systemd reads them)."""
    unit = size[-1:] if size[-1:] in ("K", "M", "G", "T") else ""
    digits = size.removesuffix(unit)
    if not (digits.isascii() and digits.isdigit()):
        raise EncodeError(f"size {size!r} is not a number of bytes, K, M, G or T")
    return int(digits) * SIZE_UNITS[unit]


def sd_size(size: str) -> Encoded:
    """A size for MemoryMax=/MemoryHigh=, as written, when systemd can hold it."""
    if size_bytes(size) > SIZE_MAX:
        raise EncodeError(f"size {size} is more than systemd can hold")
    return Encoded(size)


# --- redis-server --------------------------------------------------------------------

# What makes Redis 7 glob a config file's path (config.c, loadServerConfig).
REDIS_GLOB = frozenset("*?[")


def redis_str(value: str) -> Encoded:
    """A redis.conf value as one double-quoted Redis string (sdssplitargs: ``\\\\``,
    ``\\"`` and ``\\xHH`` escapes): no value can end its line or add a directive."""
    out = []
    for ch in value:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch.isascii() and ch.isprintable():
            out.append(ch)
        else:
            out += [f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogatepass")]
    return Encoded('"' + "".join(out) + '"')


def redis_path(value: str) -> str:
    """A path redis-server opens as a config file (the argument on its command line, an
    ``include``): absolute, normalised, and no character that makes Redis glob it."""
    problem = path_problem(value)
    if problem or REDIS_GLOB & set(value):
        raise EncodeError(f"redis-server config path {problem or 'with *, ? or [ is a wildcard pattern to Redis'}")
    return value


def redis_size(size: str) -> str:
    """A size for redis.conf, in bytes: Redis has no T suffix (``maxmemory 1tb`` stops it at
    start) and wraps ``17179869184gb`` to 0, which is no limit."""
    value = size_bytes(size)
    if value > SIZE_MAX:
        raise EncodeError(f"size {size} is more than redis-server can hold")
    return str(value)


# --- YAML ----------------------------------------------------------------------------


def _yaml_escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def yaml_str(value: object) -> Encoded:
    """A YAML double-quoted scalar that reads back as exactly ``str(value)``.

    json.dumps escapes ``"``, ``\\`` and C0; DEL, C1 (NEL among them), U+2028/U+2029, bidi
    controls and the BOM are escaped here too, so nothing in the value can end a line or
    start a new key. Lone surrogates cannot be written in UTF-8 at all and are refused.
    """
    text = str(value)
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        raise EncodeError("YAML: a lone surrogate cannot be written")
    quoted = json.dumps(text, ensure_ascii=False)
    if first_unsafe(quoted) is not None:
        quoted = "".join(_yaml_escape(ch) if is_unsafe(ch) else ch for ch in quoted)
    return Encoded(quoted)


def compose_str(value: object) -> Encoded:
    """A compose-file scalar: compose interpolates ``$VAR`` and ``${VAR}``; ``$$`` is a dollar."""
    return yaml_str(str(value).replace("$", "$$"))


def yaml_comment(value: str) -> Encoded:
    """A YAML comment's text: no character that YAML (or systemd) treats as a line break."""
    _refuse_unsafe(value, "YAML comment")
    return Encoded(value)


def yaml_document(data: Any, *, line_breaks: bool = False) -> str:
    """A whole YAML document from plain data (the LiteLLM config, an operator's rule file),
    by PyYAML's emitter, which quotes and escapes as needed; every string and number is
    checked first, and the result is parsed back and compared, so what the consumer reads
    is what labctl meant. ``line_breaks``: strings may hold line feeds and tabs (a rule's
    description), which the emitter writes inside quotes."""
    _check_tree(data, "", line_breaks)
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=False, width=1 << 16)
    if yaml.safe_load(text) != data:
        raise EncodeError("YAML: the document does not read back as written")
    return text


def _check_tree(node: Any, where: str, line_breaks: bool = False) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _check_tree(key, where)
            _check_tree(value, f"{where}.{key}", line_breaks)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _check_tree(item, f"{where}[{i}]", line_breaks)
    elif isinstance(node, str):
        _refuse_unsafe(node.replace("\n", " ").replace("\t", " ") if line_breaks else node, where or "YAML")
        if any(0xD800 <= ord(ch) <= 0xDFFF for ch in node):
            raise EncodeError(f"{where}: a lone surrogate cannot be written")
    elif isinstance(node, float) and not math.isfinite(node):
        # .nan never reads back equal, and no consumer of labctl's files means .inf.
        raise EncodeError(f"{where}: {node} is not a finite number")


def json_document(data: Any) -> str:
    """JSON (Grafana dashboards): ASCII-only escapes, so no byte of a value can be a line
    break; NaN and Infinity, which json.dumps would write though JSON has no such number,
    are refused."""
    try:
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\n"
    except ValueError as exc:
        raise EncodeError(f"JSON: {exc}") from None


# --- PromQL (inside the rules file's YAML scalars) -----------------------------------

_PROMQL_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_PROMQL_STR = re.compile(r"^[A-Za-z0-9_.:|*+-]*$")


def promql_name(value: str) -> Encoded:
    """A metric name inside an expression (labctl's own constants)."""
    if not _PROMQL_NAME.match(value):
        raise EncodeError(f"PromQL: {value!r} is not a metric name")
    return Encoded(value)


def promql_str(value: str) -> Encoded:
    """A PromQL string literal for a label matcher; only label-value characters, so the
    literal needs no escaping in PromQL or in the plain YAML scalar around it."""
    if not _PROMQL_STR.match(value):
        raise EncodeError(f"PromQL: {value!r} is not a plain label value")
    return Encoded(f'"{value}"')


def prom_label_name(value: str) -> Encoded:
    """A Prometheus label name as a YAML key: label names are ``[a-zA-Z_][a-zA-Z0-9_]*``,
    which YAML reads as a plain string."""
    if not re.match(r"^[a-zA-Z_][a-zA-Z0-9_]*$", value) or value.lower() in ("true", "false", "null", "yes",
                                                                              "no", "on", "off", "y", "n"):
        raise EncodeError(f"Prometheus: {value!r} is not a plain label name")
    return Encoded(value)
