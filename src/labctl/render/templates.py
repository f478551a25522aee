"""Find and render the Jinja templates in ``units/`` and ``compose/``.

An installed wheel carries them as ``labctl/templates/{units,compose}``; a source
checkout (editable install, tests) has them at the repository's top level.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from labctl import encode

if TYPE_CHECKING:
    import jinja2

_PACKAGED = Path(__file__).resolve().parents[1] / "templates"  # labctl/templates
_CHECKOUT = Path(__file__).resolve().parents[3]  # src/labctl/render/ -> the checkout


def template_root() -> Path:
    if (_PACKAGED / "units").is_dir():
        return _PACKAGED
    if (_CHECKOUT / "units").is_dir() and (_CHECKOUT / "compose").is_dir():
        return _CHECKOUT
    raise RuntimeError(f"labctl templates not found in {_PACKAGED} or {_CHECKOUT}")


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    import jinja2  # ~25 ms: only a command that renders pays it

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_root())),
        undefined=jinja2.StrictUndefined,  # a typo in a template is an error, not an empty string
        keep_trailing_newline=True,
        autoescape=False,
        trim_blocks=False,
        finalize=_only_encoded,
    )
    # One filter per destination (labctl.encode); a template prints nothing else.
    env.filters.update({
        "yaml": encode.yaml_str,          # a YAML double-quoted scalar
        "compose": encode.compose_str,    # ... with compose's $-interpolation escaped
        "yaml_comment": encode.yaml_comment,
        "sd_text": encode.sd_text,        # Description=
        "sd_path": encode.sd_path,        # WorkingDirectory=
        "sd_env_file": encode.sd_env_file,  # EnvironmentFile= (a wildcard pattern to systemd)
        "sd_comment": encode.sd_comment,
        "promql_name": encode.promql_name,
        "promql_str": encode.promql_str,
        "prom_label": encode.prom_label_name,
    })
    return env


def _only_encoded(value: object) -> object:
    """Jinja calls this on every ``{{ }}`` value: text must come through an encoder; plain
    numbers (ports, seconds) are safe as they are. Anything else is a template bug."""
    if isinstance(value, encode.Encoded):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):  # "nan" or "inf" in a YAML file reads as a string, or not at all
            raise encode.EncodeError(f"template printed {value}, which is not a finite number")
        return value
    raise TypeError(f"template printed a raw {type(value).__name__} ({str(value)[:40]!r}); "
                    "pass it through an encoder filter")


def render(template: str, **context: object) -> str:
    return environment().get_template(template).render(**context)
