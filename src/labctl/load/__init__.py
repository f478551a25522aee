"""Turn ``inventory.yaml`` into a validated, cross-checked :class:`Inventory`.

This is the only door into the core: everything after it may assume a coherent
inventory. Every problem becomes an :class:`InputError` with file, line and dotted path.
"""

from __future__ import annotations

import difflib
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from labctl import secretscan
from labctl.errors import InputError, InvalidInventory
from labctl.inventory import yamlsrc
from labctl.load import checks
from labctl.inventory.schema import KINDS, Inventory

if TYPE_CHECKING:
    from labctl.load.fleet import FleetSplit


@dataclass(frozen=True)
class Loaded:
    inventory: Inventory
    source: yamlsrc.Source
    # A fleet inventory's plan: each host's view (labctl.load.fleet); None for one host.
    fleet: FleetSplit | None = None
    # What is accepted but likely not meant (``file:line: path: message``), for the commands
    # to show; never refused.
    warnings: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return self.source.path


def load_inventory(path: Path | str, *, check_files: bool = False, text: str | None = None) -> Loaded:
    """Parse, validate and cross-check. Raises InvalidInventory (or InputError)."""
    source = yamlsrc.load(Path(path), text)
    if not isinstance(source.data, dict):
        raise InputError(str(source.path), source.line_of(()), "(document)",
                         f"expected a mapping at the top level, got {_type_name(source.data)}")
    try:
        inventory = Inventory.model_validate(source.data)
    except ValidationError as exc:
        raise InvalidInventory(_convert(exc, source)) from None
    # A secret anywhere in the file, fleet sections included: the whole document, once.
    secrets = checks.secret_problems(inventory, source)
    if inventory.is_fleet:
        from labctl.load import fleet

        errors, plan = fleet.check(inventory, source, check_files=check_files)
        if secrets or errors:
            raise InvalidInventory(secrets + errors)
        assert plan is not None
        seen = dict.fromkeys(w for view in plan.views.values() for w in checks.warnings(view, source))
        return Loaded(inventory, source, plan, tuple(seen))
    errors = checks.cross_check(inventory, source, check_files=check_files)
    if secrets or errors:
        raise InvalidInventory(secrets + errors)
    return Loaded(inventory, source, warnings=tuple(checks.warnings(inventory, source)))


def _type_name(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number",
            bool: "a boolean"}.get(type(value), type(value).__name__)


def _convert(exc: ValidationError, source: yamlsrc.Source) -> list[InputError]:
    out: list[InputError] = []
    seen: set[tuple[str, str]] = set()
    for err in exc.errors(include_url=False):
        loc = _strip_union_tags(tuple(err["loc"]), source.data)
        message = _message(err, loc, source.data)
        if message is None:
            continue
        key = (yamlsrc.dotted(loc), message)
        if key in seen:
            continue
        seen.add(key)
        out.append(source.error(loc, message))
    return out


# Fields typed SecretRef: a plain value there is a secret pasted into the file.
SECRET_FIELDS = ("master_key", "password")


def _strip_union_tags(loc: tuple, data: Any) -> tuple:
    """pydantic puts the discriminator value into the location of a tagged union member
    (``services.gw.litellm.port``); the operator's file has no such level. Same for the
    ``[key]`` marker of an invalid mapping key."""
    if len(loc) >= 3 and loc[0] == "services" and loc[2] in KINDS:
        loc = loc[:2] + loc[3:]
    # A bad mapping key is reported by pydantic at ``<key>.[key]``; the key's own line is meant.
    return tuple(part for part in loc if part != "[key]")


def _message(err: dict, loc: tuple, data: Any) -> str | None:
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], data)
        hint = ""
        if allowed:
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(sorted(allowed))})"
        return f"unknown key{hint}"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        return f"unknown service kind {err['input'].get('kind')!r}; expected one of: {', '.join(KINDS)}"
    if kind == "union_tag_not_found":
        return f"service needs a 'kind' (one of: {', '.join(KINDS)})"
    if kind == "literal_error" and loc == ("version",):
        return f"unsupported inventory version {err['input']!r}; this labctl reads version 1"
    if loc and loc[-1] in SECRET_FIELDS and isinstance(err.get("input"), (str, int, float)):
        return ("secrets must not be inline in the inventory; reference them with "
                "{env_file: PATH, var: NAME} or {env: NAME}")
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if kind == "string_pattern_mismatch":
        shown = repr(err["input"])
        # Never echo what may be a secret: anything under a secret reference, or a value
        # that looks like one.
        if any(part in SECRET_FIELDS for part in loc) or secretscan.value_problem(str(err["input"])):
            shown = "the value"
        msg = f"{shown} is not allowed here (must match {err['ctx']['pattern']})"
    return msg[0].lower() + msg[1:] if msg else msg


def _allowed_keys(loc: tuple, data: Any) -> list[str]:
    """The field names of the model found at ``loc`` (for 'did you mean')."""
    return _fields_at(Inventory, loc, data) or []


def _fields_at(ann: Any, loc: tuple, node: Any) -> list[str] | None:
    origin, args = get_origin(ann), get_args(ann)
    if origin is Annotated:
        return _fields_at(args[0], loc, node)
    if origin in (Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        kind = node.get("kind") if isinstance(node, dict) else None
        for member in members:
            tag = getattr(member, "model_fields", {}).get("kind")
            if tag is not None and kind not in get_args(tag.annotation):
                continue
            found = _fields_at(member, loc, node)
            if found is not None:
                return found
        return None
    if origin in (list, dict):
        if not loc:
            return None
        child = node[loc[0]] if _has(node, loc[0]) else None
        return _fields_at(args[-1], loc[1:], child)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        if not loc:
            return list(ann.model_fields)
        field = ann.model_fields.get(str(loc[0]))
        if field is None:
            return None
        child = node.get(loc[0]) if isinstance(node, dict) else None
        return _fields_at(field.annotation, loc[1:], child)
    return None


def _has(node: Any, key: Any) -> bool:
    if isinstance(node, dict):
        return key in node
    return isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node)
