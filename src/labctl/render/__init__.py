"""Renderers: pure, deterministic functions from a validated inventory to files.

``render_all`` returns ``{path relative to the config root: content}``; see labctl.inventory.layout.
How each value is written into each kind of file is decided in one place,
labctl.encode, which the inventory schema also uses to refuse what cannot be written.
This package's top level imports nothing else, so the schema can import the encoders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labctl.inventory.schema import Inventory


def render_all(inv: "Inventory") -> dict[str, str]:
    from labctl.render.gateway import render_gateway
    from labctl.inventory.layout import Layout
    from labctl.render.monitoring import render_monitoring
    from labctl.render.redis import render_redis
    from labctl.render.units import render_units

    layout = Layout.of(inv)
    files = render_units(inv, layout)
    gateway = render_gateway(inv)
    if gateway is not None:
        from labctl.render import gate, litellm_launch

        files[layout.litellm_config] = gateway
        files[layout.litellm_file(gate.MODULE_FILE)] = gate.MODULE
        files[layout.litellm_file(litellm_launch.MODULE_FILE)] = litellm_launch.MODULE
    files.update(render_redis(inv, layout))
    files.update(render_monitoring(inv, layout))
    return dict(sorted(files.items()))
