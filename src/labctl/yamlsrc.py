"""Load YAML while remembering where every value came from.

Operators get errors as ``file:line: dotted.path: message``. PyYAML's ``safe_load``
throws positions away, so we compose the node graph ourselves and build plain Python
objects from it, recording the line of each mapping key and sequence item.

PyYAML silently lets a repeated mapping key overwrite the first one; in an inventory
that hides a whole service, so duplicates are an error here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from labctl.errors import InputError

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


class _Builder:
    def __init__(self, path: Path) -> None:
        self.path = path
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
        return self.build_scalar(node, loc)

    def build_scalar(self, node: yaml.Node, loc: Loc) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, loc, "mapping keys must be plain scalars")
        # Resolve the scalar exactly as safe_load would (ints, bools, nulls, dates...).
        return self.scalars.construct_object(node, deep=True)


def load(path: Path, text: str | None = None) -> Source:
    """Parse ``path`` (or ``text`` attributed to it). Raises InputError, never yaml.YAMLError."""
    path = Path(path)
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(str(path), 0, "(file)", "no such file") from None
        except IsADirectoryError:
            raise InputError(str(path), 0, "(file)", "is a directory, expected a YAML file") from None
        except PermissionError:
            raise InputError(str(path), 0, "(file)", "permission denied") from None
        except UnicodeDecodeError as exc:
            raise InputError(str(path), 0, "(file)", f"not UTF-8 text ({exc.reason})") from None
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        problem = exc.problem or exc.context or "invalid YAML"
        raise InputError(str(path), line, "(yaml)", f"YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise InputError(str(path), 1, "(yaml)", f"YAML error: {exc}") from None
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        raise InputError(str(path), 1, "(document)", "file is empty, expected a mapping")
    if len(nodes) > 1:
        raise InputError(str(path), nodes[1].start_mark.line + 1, "(document)",
                         "more than one YAML document; labctl reads exactly one")
    builder = _Builder(path)
    try:
        data = builder.build(nodes[0], ())
    except yaml.constructor.ConstructorError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 1
        raise InputError(str(path), line, "(yaml)", f"YAML error: {exc.problem}") from None
    return Source(path=path, data=data, lines=builder.lines)
