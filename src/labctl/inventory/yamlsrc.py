"""Load YAML while remembering where every value came from.

Operators get errors as ``file:line: dotted.path: message``. PyYAML's ``safe_load``
throws positions away, so we compose the node graph ourselves and build plain Python
objects from it, recording the line of each mapping key and sequence item.

PyYAML silently lets a repeated mapping key overwrite the first one; in an inventory
that hides a whole service, so duplicates are an error here.

The input may be hostile, so every cost is bounded before it is paid: only a regular file
of at most ``MAX_BYTES`` is read (a FIFO or a device is refused without blocking), flow
nesting is measured on the raw text before PyYAML's scanner sees it (its flow scanning is
quadratic in depth), block nesting is capped while events stream, and the size of the
document *after* alias expansion is computed on the node graph before anything is built
(an alias bomb of a kilobyte expands to billions of nodes). Every string, key or value,
is checked for characters no rendered file may carry (labctl.text).
"""

from __future__ import annotations

import errno
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from labctl import fsio
from labctl import text as textrules
from labctl.errors import InputError, os_reason

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Source:
    """A parsed YAML document plus a map from path to 1-based line number."""

    path: Path
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)

    def line_of(self, loc: Loc) -> int:
        """The line of ``loc`` or of its nearest ancestor that exists in the file."""
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), 1)

    def error(self, loc: Loc, message: str) -> InputError:
        return InputError(str(self.path), self.line_of(loc), dotted(loc), message)


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]*$")


def dotted(loc: Loc) -> str:
    """``('services', 'vllm', 'port')`` -> ``services.vllm.port``; list items as ``[3]``;
    keys that would be unreadable in that form (empty, spaces, quotes) as ``["a key"]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(str(part)):
            out += ("." if out else "") + str(part)
        else:
            out += f"[{json.dumps(str(part))}]"
    return out or "(document)"


# Bounds on hostile input. A real inventory is a few KiB with a nesting depth under 10.
MAX_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 100_000  # after alias expansion
MAX_EVENTS = 500_000

_FLOW_TOKENS = re.compile(r"""[\[\]{}"'#\n]""")


class _Builder:
    def __init__(self, path: Path, line_breaks: bool = False) -> None:
        self.path = path
        self.line_breaks = line_breaks
        self.lines: dict[Loc, int] = {}
        # Used only for its scalar constructors; it never reads a stream.
        self.scalars = yaml.SafeLoader("")

    def fail(self, node: yaml.Node, loc: Loc, message: str) -> InputError:
        return InputError(str(self.path), node.start_mark.line + 1, dotted(loc), message)

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise self.fail(key_node, loc, "YAML merge keys ('<<') are not supported")
                key = self.build_scalar(key_node, loc)
                if not isinstance(key, (str, int, float, bool)) or isinstance(key, bool):
                    raise self.fail(key_node, loc, "mapping keys must be strings")
                key = str(key)
                self.check_text(key_node, loc + (key,), key, "key ")
                if key in out:
                    first = self.lines.get(loc + (key,), "?")
                    raise self.fail(key_node, loc + (key,), f"duplicate key (first defined on line {first})")
                self.lines[loc + (key,)] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, loc + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                self.lines[loc + (i,)] = item.start_mark.line + 1
                items.append(self.build(item, loc + (i,)))
            return items
        value = self.build_scalar(node, loc)
        if isinstance(value, str):
            # Same length, so a reported position stays right.
            self.check_text(node, loc, value.replace("\n", " ").replace("\t", " ") if self.line_breaks else value)
        return value

    def check_text(self, node: yaml.Node, loc: Loc, value: str, what: str = "") -> None:
        problem = textrules.unsafe_message(value, what)
        if problem:
            raise self.fail(node, loc, problem)

    def build_scalar(self, node: yaml.Node, loc: Loc) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, loc, "mapping keys must be plain scalars")
        # Resolve the scalar exactly as safe_load would (ints, bools, nulls...).
        try:
            value = self.scalars.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            raise self.fail(node, loc, f"YAML error: {exc.problem}") from None
        except (ValueError, OverflowError):
            # A 5000-digit integer (Python's int-from-text limit) or an impossible date.
            kind = node.tag.rsplit(":", 1)[-1]
            raise self.fail(node, loc, f"not a usable {kind} (too long or out of range); quote it "
                                       "if it is meant as text") from None
        except Exception:  # noqa: BLE001 - PyYAML's constructors fail in odd ways on odd tags
            # ("!!timestamp" on an empty scalar raises AttributeError): still the input's fault.
            kind = node.tag.rsplit(":", 1)[-1]
            raise self.fail(node, loc, f"not a valid YAML {kind} value; quote it if it is meant as "
                                       "text") from None
        if value is None or isinstance(value, (str, int, float, bool)):
            return value
        # !!binary (bytes), timestamps (date/datetime): nothing in an inventory is one.
        raise self.fail(node, loc, f"YAML {node.tag.rsplit(':', 1)[-1]} values are not supported; "
                                   "quote it if it is meant as text")


def _read(path: Path) -> str:
    """The file's text: a regular file only, opened without blocking, bounded in size."""
    where = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise InputError(where, 0, "(file)", _os_problem(exc)) from None
    try:
        info = os.fstat(fd)
        kind = fsio.file_kind(info.st_mode)
        if kind:
            raise InputError(where, 0, "(file)", f"is {kind}, expected a YAML file")
        if info.st_size > MAX_BYTES:
            raise InputError(where, 0, "(file)", f"is {info.st_size} bytes; an inventory may be at most "
                                                 f"{MAX_BYTES} bytes")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            total += len(chunk)
            if total > MAX_BYTES:  # a file that grows while read, or lies about its size (/proc)
                raise InputError(where, 0, "(file)", f"is more than {MAX_BYTES} bytes")
            chunks.append(chunk)
    except OSError as exc:
        raise InputError(where, 0, "(file)", _os_problem(exc)) from None
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(where, 0, "(file)", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _os_problem(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "no such file"
    if exc.errno == errno.EISDIR:
        return "is a directory, expected a YAML file"
    if exc.errno == errno.EACCES or exc.errno == errno.EPERM:
        return "permission denied"
    if exc.errno == errno.ELOOP:
        return "too many levels of symbolic links (a symlink loop?)"
    if exc.errno == errno.ENOTDIR:
        return "a component of the path is not a directory"
    if exc.errno == errno.ENAMETOOLONG:
        return "file name too long"
    return os_reason(exc)


def _flow_depth(text: str) -> tuple[int, int]:
    """(deepest ``[``/``{`` nesting, its line) outside quotes and comments, measured in one
    regex pass: PyYAML's scanner spends quadratic time on deep flow nesting."""
    depth = deepest = 0
    line = deepest_line = 1
    quote: str | None = None
    comment = False
    line_start = 0
    for m in _FLOW_TOKENS.finditer(text):
        ch = m.group()
        if ch == "\n":
            line += 1
            comment = False
            line_start = m.end()
            continue
        if comment:
            continue
        if quote:
            if ch == quote:
                if quote == '"':
                    # an escaped quote: count the backslashes before it
                    i, slashes = m.start() - 1, 0
                    while i >= 0 and text[i] == "\\":
                        slashes, i = slashes + 1, i - 1
                    if slashes % 2:
                        continue
                quote = None
            continue
        if ch == "#":
            if m.start() == line_start or text[m.start() - 1] in " \t":
                comment = True
            continue
        if ch in "\"'":
            # A quote opens a quoted scalar only where a scalar starts.
            before = text[line_start:m.start()].rstrip(" \t")
            if not before or before[-1] in "[{,:-?":
                quote = ch
            continue
        if ch in "[{":
            depth += 1
            if depth > deepest:
                deepest, deepest_line = depth, line
        else:
            depth = max(0, depth - 1)
    return deepest, deepest_line


# libyaml (bundled with PyYAML's wheels) parses ~20x faster than the pure-Python parser;
# both give the same nodes and marks. Its error texts differ, so a document it refuses is
# parsed again by the pure-Python parser for the message operators (and tests) know.
_FAST = getattr(yaml, "CSafeLoader", None)


def _compose(text: str, path: Path) -> list[yaml.Node]:
    if _FAST is not None:
        try:
            _bounded_events(text, path, _FAST)
            return list(yaml.compose_all(text, Loader=_FAST))
        except yaml.YAMLError:
            pass
    _bounded_events(text, path, yaml.SafeLoader)
    return list(yaml.compose_all(text, Loader=yaml.SafeLoader))


def _bounded_events(text: str, path: Path, loader: type) -> None:
    """Stream parser events (no recursion, nothing built) to cap depth and size early."""
    depth = 0
    for count, event in enumerate(yaml.parse(text, Loader=loader)):
        if count > MAX_EVENTS:
            raise InputError(str(path), event.start_mark.line + 1, "(document)",
                             f"more than {MAX_EVENTS} YAML nodes; an inventory is far smaller")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise InputError(str(path), event.start_mark.line + 1, "(document)",
                                 f"nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _expanded_size(root: yaml.Node, path: Path) -> None:
    """Refuse a node graph whose alias expansion is huge or recursive, before building it.

    Aliases make the composed graph a DAG (or a cycle, for ``x: &a [*a]``) whose expanded
    size can be exponential in the file's size; the size is computed here with one
    memoised walk of the graph, iteratively (no Python recursion).
    """
    sizes: dict[int, int] = {}
    depths: dict[int, int] = {}  # aliases can also nest collections deeper than the text does
    on_stack: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_stack.discard(key)
            children = _children(node)
            total = 1 + sum(sizes[id(child)] for child in children)
            if total > MAX_NODES:
                raise InputError(str(path), node.start_mark.line + 1, "(document)",
                                 f"expands to more than {MAX_NODES} values through YAML aliases "
                                 "(an alias bomb?)")
            depth = 1 + max((depths[id(child)] for child in children), default=0)
            if depth > MAX_DEPTH:
                raise InputError(str(path), node.start_mark.line + 1, "(document)",
                                 f"nested deeper than {MAX_DEPTH} levels once YAML aliases are expanded")
            sizes[key], depths[key] = total, depth
            continue
        if key in sizes:
            continue
        if key in on_stack:
            raise InputError(str(path), node.start_mark.line + 1, "(document)",
                             "a YAML alias refers to a collection that contains it (recursive alias)")
        on_stack.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_stack:
                raise InputError(str(path), child.start_mark.line + 1, "(document)",
                                 "a YAML alias refers to a collection that contains it (recursive alias)")
            if id(child) not in sizes:
                stack.append((child, False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def load(path: Path, text: str | None = None, *, max_bytes: int = MAX_BYTES, line_breaks: bool = False) -> Source:
    """Parse ``path`` (or ``text`` attributed to it). Raises InputError, never yaml.YAMLError.

    ``max_bytes`` bounds ``text``; ``line_breaks`` lets string values (never keys) hold line
    feeds and tabs, for files whose consumer reads them as text (an alert's description)."""
    path = Path(path)
    if text is None:
        text = _read(path)
    elif len(text.encode("utf-8", errors="surrogatepass")) > max_bytes:
        raise InputError(str(path), 0, "(file)", f"is more than {max_bytes} bytes")
    deepest, line = _flow_depth(text)
    if deepest > MAX_DEPTH:
        raise InputError(str(path), line, "(document)", f"brackets nested deeper than {MAX_DEPTH} levels")
    try:
        nodes = _compose(text, path)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        problem = exc.problem or exc.context or "invalid YAML"
        raise InputError(str(path), line, "(yaml)", f"YAML syntax error: {_one_line(problem)}") from None
    except yaml.YAMLError as exc:
        raise InputError(str(path), 1, "(yaml)", f"YAML error: {_one_line(str(exc))}") from None
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        raise InputError(str(path), 1, "(document)", "file is empty, expected a mapping")
    if len(nodes) > 1:
        raise InputError(str(path), nodes[1].start_mark.line + 1, "(document)",
                         "more than one YAML document; labctl reads exactly one")
    _expanded_size(nodes[0], path)
    builder = _Builder(path, line_breaks)
    data = builder.build(nodes[0], ())
    return Source(path=path, data=data, lines=builder.lines)


def _one_line(message: str) -> str:
    """PyYAML's messages can quote the offending character; keep them to one clean line."""
    clean = "".join(ch if not textrules.is_unsafe(ch) else textrules.describe(ch) for ch in message)
    return " ".join(clean.split())
