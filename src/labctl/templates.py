"""Find and render the Jinja templates in ``units/`` and ``compose/``.

An installed wheel carries them as ``labctl/templates/{units,compose}``; a source
checkout (editable install, tests) has them at the repository's top level.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import jinja2

_PACKAGED = Path(__file__).resolve().parent / "templates"
_CHECKOUT = Path(__file__).resolve().parents[2]


def template_root() -> Path:
    if (_PACKAGED / "units").is_dir():
        return _PACKAGED
    if (_CHECKOUT / "units").is_dir() and (_CHECKOUT / "compose").is_dir():
        return _CHECKOUT
    raise RuntimeError(f"labctl templates not found in {_PACKAGED} or {_CHECKOUT}")


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_root())),
        undefined=jinja2.StrictUndefined,  # a typo in a template is an error, not an empty string
        keep_trailing_newline=True,
        autoescape=False,
        trim_blocks=False,
    )
    # JSON scalars are valid YAML scalars: every interpolated value goes through this,
    # so a quote or colon in an inventory value can never change a file's structure.
    env.filters["tojson"] = lambda value: json.dumps(value, sort_keys=True)
    return env


def render(template: str, **context: object) -> str:
    return environment().get_template(template).render(**context)
