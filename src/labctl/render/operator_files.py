"""The operator's own monitoring files: read with care, parsed, written again from the data.

An inventory names rule files, their promtool unit tests and dashboards
(``monitoring.rule_files``, ``rule_tests``, ``dashboards``). The rule files and dashboards
are installed into the rendered tree, which is world-readable (0644: the Prometheus and
Grafana containers run as other users and read it through a bind mount) and which
``labctl plan`` prints as diffs; the tests are read by promtool at pre-flight, whose
complaints doctor shows. So whatever a named file holds could be published, and an
inventory can name any file its operator can read (a 0600 secrets file,
``/proc/self/environ``). Each named file must therefore be:

- a regular file: its resolved path outside /proc, /sys and /dev (whose files stat as
  regular files of size 0 and hold a process's environment, or never end), opened without
  blocking (a FIFO), read to at most :data:`MAX_BYTES`, and holding no more than its size
  says (procfs mounted elsewhere);
- readable by others already: a file private to its owner (0600, 0640) would be published
  by its 0644 copy (only the file's own mode counts: a home directory closed to others is
  the usual place for world-readable files);
- what it claims to be, parsed and written again from the parsed data only, so nothing but
  rule or dashboard data passes: a Prometheus rule file (``groups`` of rules, nothing
  else) through labctl's bounded YAML loader (labctl.inventory.yamlsrc) and YAML encoder; a
  promtool test file (``tests``), whose own ``rule_files`` are held to the same rules; a
  Grafana dashboard (a JSON object with ``panels``) nested at most :data:`MAX_DEPTH` deep,
  with finite numbers only (JSON has no NaN or Infinity, and ``1e400`` reads as infinity);
- free of anything the secret scanner (labctl.secretscan) takes for a secret, in every
  string, key or value.

A refusal (:class:`Refused`) is one line naming the file and, inside it, the line and key;
never a value from it.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any, Callable

from labctl import fsio, secretscan
from labctl.errors import InputError, os_reason
from labctl.inventory import yamlsrc
from labctl import encode
from labctl.text import first_unsafe

MAX_BYTES = 4 * 2**20
# A Grafana dashboard nests about a dozen levels; json.loads recurses once per level and
# fails with RecursionError near a thousand.
MAX_DEPTH = 64
# labctl's own dashboard's uid: an operator's taking it would replace labctl's.
DASHBOARD_UID = "labctl-overview"
# Kernel filesystems: their "regular files" report size 0 and hold live process state.
SPECIAL_ROOTS = ("/proc", "/sys", "/dev")
_PUBLISH_HINT = "a file labctl installs is world-readable and shown by `labctl plan`: keep secrets out of it"


class Refused(ValueError):
    """Why a named file is not installed: one line, never the file's content."""


# --- reading ----------------------------------------------------------------------------


def read(path: str) -> str:
    """The text of the operator's file at ``path`` (absolute, ``~`` expanded), or Refused."""
    try:
        real = os.path.realpath(path, strict=True)
    except OSError as exc:
        raise Refused(f"{path} {_os_problem(exc)}") from None
    for root in SPECIAL_ROOTS:
        if real == root or real.startswith(root + "/"):
            where = "is" if path == root or path.startswith(root + "/") else "resolves to a path"
            raise Refused(f"{path} {where} under {root}, a kernel filesystem, not a file of the operator's")
    try:
        # The resolved path has no symlink left: O_NOFOLLOW makes a swapped-in one fail.
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY | os.O_NOFOLLOW)
    except OSError as exc:
        raise Refused(f"{path} {_os_problem(exc)}") from None
    try:
        info = os.fstat(fd)
        kind = fsio.file_kind(info.st_mode)
        if kind is not None:
            raise Refused(f"{path} is {kind}, not a regular file")
        if not info.st_mode & stat.S_IROTH:
            raise Refused(f"{path} is private to its owner (mode {stat.S_IMODE(info.st_mode):04o}); labctl installs "
                          "it readable by everyone (0644), which would publish it: make it readable by others "
                          "(chmod o+r) only if nothing in it is private")
        if info.st_size > MAX_BYTES:
            raise Refused(f"{path} is {info.st_size} bytes; at most {MAX_BYTES} ({MAX_BYTES >> 20} MiB)")
        chunks, total = [], 0
        while chunk := os.read(fd, 65536):
            total += len(chunk)
            if total > MAX_BYTES:
                raise Refused(f"{path} is more than {MAX_BYTES} bytes ({MAX_BYTES >> 20} MiB)")
            chunks.append(chunk)
        if total > info.st_size:
            # procfs's mark, wherever it is mounted (a container's /host/proc): a file
            # of size 0 that holds a process's state. Or a file growing while read.
            raise Refused(f"{path} holds more than its size ({info.st_size} bytes) says: a kernel file or one being "
                          "written, not a file of the operator's")
    except OSError as exc:
        raise Refused(f"{path} {_os_problem(exc)}") from None
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _os_problem(exc: OSError) -> str:
    return {errno.ENOENT: "does not exist", errno.EACCES: "cannot be read (permission denied)",
            errno.EPERM: "cannot be read (permission denied)", errno.ELOOP: "is a symlink loop",
            errno.ENOTDIR: "has a path component that is not a directory",
            errno.ENAMETOOLONG: "is a file name too long"}.get(exc.errno or 0, f"cannot be read ({os_reason(exc)})")


# --- finding secrets and non-data in parsed content -------------------------------------


def _short(part: str | int) -> str | int:
    """A key as it may appear in an error: not too long, and not itself secret-looking."""
    if isinstance(part, int):
        return part
    if len(part) > 64 or secretscan.value_problem(part):
        return "…"
    return part


def _where(loc: tuple) -> str:
    return yamlsrc.dotted(tuple(_short(p) for p in loc))


def _at(place: str, where: str, message: str) -> str:
    """A problem inside a named file, for the inventory field's one line: ``FILE:LINE: message
    (at key.path)``. The key path goes last, in parentheses: written ``key: message`` inside the
    line, a key named password or secret would read as a secret-named pair to the redactor
    that every error line passes through."""
    return f"{place}: {message} (at {where})"


def _scan(data: Any, refuse: Callable[[tuple, str], Refused]) -> None:
    """Refuse the first string (key or value) the secret scanner flags, or number that is
    not finite, in document order; iterative, so depth costs no recursion."""
    stack: list[tuple[tuple, Any]] = [((), data)]
    while stack:
        loc, node = stack.pop()
        if isinstance(node, dict):
            for key in node:
                problem = secretscan.value_problem(str(key))
                if problem:
                    raise refuse(loc, f"a key {problem}; {_PUBLISH_HINT}")
            stack.extend(reversed([(loc + (key,), value) for key, value in node.items()]))
        elif isinstance(node, list):
            stack.extend(reversed([(loc + (i,), value) for i, value in enumerate(node)]))
        elif isinstance(node, str):
            problem = secretscan.value_problem(node)
            if problem:
                raise refuse(loc, f"the value {problem}; {_PUBLISH_HINT}")
        elif isinstance(node, float) and not math.isfinite(node):
            raise refuse(loc, "is not a finite number (.nan, .inf); no consumer reads it the same")


# --- Prometheus rule files and their promtool tests -------------------------------------

# Every key Prometheus's rule-file format has (rulefmt; query_offset since 2.53, a group's
# labels since 3.0). Prometheus refuses any other key itself, so the file loses nothing.
GROUP_KEYS = ("name", "interval", "query_offset", "limit", "labels", "rules")
RULE_KEYS = ("record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations")
_SCALARS = (str, int, float, bool, type(None))


def _yaml(path: str, text: str) -> yamlsrc.Source:
    """Parse through labctl's bounded loader (depth, alias expansion, duplicate keys,
    control characters); line feeds and tabs are text in a rule's annotations."""
    try:
        return yamlsrc.load(Path(path), text, max_bytes=MAX_BYTES, line_breaks=True)
    except InputError as exc:
        raise Refused(_at(f"{exc.file}:{exc.line}", exc.path, exc.message)) from None


def _refuser(source: yamlsrc.Source) -> Callable[[tuple, str], Refused]:
    def refuse(loc: tuple, message: str) -> Refused:
        return Refused(_at(f"{source.path}:{source.line_of(loc)}", _where(loc), message))
    return refuse


def _rule_shape(data: Any, refuse: Callable[[tuple, str], Refused]) -> None:
    if not isinstance(data, dict) or "groups" not in data:
        raise refuse((), "not a Prometheus rule file (a mapping with groups:)")
    for key in data:
        if key != "groups":
            raise refuse((key,), "not a key of a Prometheus rule file (groups: is its only key)")
    if not isinstance(data["groups"], list):
        raise refuse(("groups",), "must be a list of rule groups")
    for g, group in enumerate(data["groups"]):
        here = ("groups", g)
        _mapping(group, here, GROUP_KEYS, ("name", "rules"), "a rule group", refuse)
        if not isinstance(group["rules"], list):
            raise refuse(here + ("rules",), "must be a list of rules")
        _labels(group, here, refuse)
        for r, rule in enumerate(group["rules"]):
            at = here + ("rules", r)
            _mapping(rule, at, RULE_KEYS, ("expr",), "a rule", refuse)
            if ("alert" in rule) == ("record" in rule):
                raise refuse(at, "a rule has exactly one of alert: or record:")
            _labels(rule, at, refuse)


def _mapping(node: Any, loc: tuple, keys: tuple[str, ...], required: tuple[str, ...], what: str,
             refuse: Callable[[tuple, str], Refused]) -> None:
    if not isinstance(node, dict):
        raise refuse(loc, f"{what} must be a mapping")
    for key in node:
        if key not in keys:
            raise refuse(loc + (key,), f"not a key of {what} ({', '.join(keys)})")
    for key in required:
        if key not in node:
            raise refuse(loc, f"{what} needs {key}:")
    for key, value in node.items():
        if key not in ("rules", "labels", "annotations") and not isinstance(value, _SCALARS):
            raise refuse(loc + (key,), "must be a single value")


def _labels(node: dict, loc: tuple, refuse: Callable[[tuple, str], Refused]) -> None:
    for key in ("labels", "annotations"):
        values = node.get(key)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise refuse(loc + (key,), "must be a mapping of names to values")
        for name, value in values.items():
            if not isinstance(value, _SCALARS):
                raise refuse(loc + (key, name), "must be a single value")


def rule_data(path: str) -> Any:
    """The rule file at ``path`` as data, checked (see the module docstring)."""
    source = _yaml(path, read(path))
    refuse = _refuser(source)
    _rule_shape(source.data, refuse)
    _scan(source.data, refuse)
    return source.data


def rule_file(path: str) -> str:
    """The rule file at ``path``, as labctl installs it: written again from its data."""
    return encode.yaml_document(rule_data(path), line_breaks=True)


_GLOB = re.compile(r"[*?\[]")


def rule_test(path: str) -> None:
    """Check a promtool rule test file and the rule files it names (promtool reads them,
    relative to the test's directory, and quotes what it refuses)."""
    source = _yaml(path, read(path))
    refuse = _refuser(source)
    data = source.data
    if not isinstance(data, dict) or not isinstance(data.get("tests"), list):
        raise refuse((), "not a promtool rule test file (a mapping with a list of tests:)")
    _scan(data, refuse)
    files = data.get("rule_files") or []
    if not isinstance(files, list):
        raise refuse(("rule_files",), "must be a list of rule files")
    for i, name in enumerate(files):
        if not isinstance(name, str) or not name or first_unsafe(name):
            raise refuse(("rule_files", i), "must be a file name (text without control characters)")
        if _GLOB.search(name):
            raise refuse(("rule_files", i), "name each rule file: labctl checks every file promtool reads, and "
                                            "does not follow globs")
        target = os.path.join(os.path.dirname(path), name)
        try:
            rule_data(target)
        except Refused as exc:
            raise refuse(("rule_files", i), f"the rule file it tests is refused: {exc}") from None


# --- Grafana dashboards -----------------------------------------------------------------

# A JSON string (to skip; an unterminated one runs to the end, so each byte is looked at
# once) or a bracket.
_JSON_TOKENS = re.compile(r'"(?:[^"\\]++|\\.)*+"?|[\[\]{}]')


def _json_depth(text: str) -> tuple[int, int]:
    """(deepest bracket nesting, the offset where it is reached), in one linear pass."""
    depth = deepest = at = 0
    for m in _JSON_TOKENS.finditer(text):
        ch = m.group()[0]
        if ch in "[{":
            depth += 1
            if depth > deepest:
                deepest, at = depth, m.start()
        elif ch in "]}":
            depth -= 1
    return deepest, at


class _NotFinite(Exception):
    pass


def _no_constant(name: str) -> Any:
    raise _NotFinite(f"holds {name}, which is not a JSON number (Grafana would not read the file)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite("holds a number too large for a double (it reads as infinity, which JSON does not have)")
    return value


def dashboard_data(path: str) -> dict[str, Any]:
    """The dashboard at ``path`` as data, checked (see the module docstring)."""
    text = read(path)
    deepest, at = _json_depth(text)
    if deepest > MAX_DEPTH:
        raise Refused(f"{path}:{text.count(chr(10), 0, at) + 1}: nested deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except _NotFinite as exc:
        raise Refused(f"{path} {exc}") from None
    except json.JSONDecodeError as exc:
        raise Refused(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:  # an int of over 4300 digits; depth (above)
        raise Refused(f"{path} is not usable JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict) or "panels" not in data:
        raise Refused(f"{path} is not a Grafana dashboard (a JSON object with panels)")
    if data.get("uid") == DASHBOARD_UID:
        raise Refused(f"{path} takes labctl's own dashboard uid {DASHBOARD_UID!r}")
    _scan(data, lambda loc, message: Refused(_at(str(path), _where(loc), message)))
    return data


def dashboard(path: str) -> str:
    """The dashboard at ``path``, as labctl installs it: written again as JSON."""
    return encode.json_document(dashboard_data(path))


# What each monitoring field names, and the check that refuses a bad one.
CHECKS: dict[str, Callable[[str], object]] = {"rule_files": rule_file, "rule_tests": rule_test,
                                              "dashboards": dashboard}
