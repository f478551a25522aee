"""Frozen records for the classes `labctl status` from its snapshot builds (labctl.__main__).

A ``@dataclass(frozen=True)`` is made by generating and compiling its methods when its
module is imported: about 0.6 ms a class here, and that path imports ten of them (the
command-line options, the unit facts, the probe plans and results, the report). A
:class:`Record` subclass lists its fields in ``__slots__`` and costs what a plain class
costs; it behaves as the frozen dataclass would (tests/unit/test_records.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from typing import Self


class Record:
    """A frozen record: ``__slots__`` fields in order, defaults (``_defaults``: a value, or
    in ``_factories`` a callable that makes a fresh one), equality, hash and repr by value,
    :meth:`as_dict` as ``dataclasses.asdict`` gives it and :meth:`replace` as
    ``dataclasses.replace`` does."""

    __slots__: tuple[str, ...] = ()
    _defaults: dict[str, object] = {}
    _factories: dict[str, Callable[[], object]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        fields = self.__slots__
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__}() takes {len(fields)} arguments, {len(args)} given")
        values = dict(zip(fields, args))
        for name, value in kwargs.items():
            if name not in fields or name in values:
                raise TypeError(f"{type(self).__name__}() got an unexpected or repeated argument {name!r}")
            values[name] = value
        for name in fields:
            if name in values:
                value = values[name]
            elif name in self._factories:
                value = self._factories[name]()
            elif name in self._defaults:
                value = self._defaults[name]
            else:
                raise TypeError(f"{type(self).__name__}() missing argument {name!r}")
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: {type(self).__name__} is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: {type(self).__name__} is frozen")

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self.__slots__)})"

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return type(self)(**{**{n: getattr(self, n) for n in self.__slots__}, **changes})

    def fields(self) -> dict[str, object]:
        """The fields as ``dataclasses.asdict`` gives them: nested records as dicts, lists,
        tuples and dicts copied."""
        return {name: _plain(getattr(self, name)) for name in self.__slots__}

    def as_dict(self) -> dict[str, object]:
        return self.fields()


def _plain(value: object) -> object:
    if isinstance(value, Record):
        return value.fields()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value
