"""Renderers: pure, deterministic functions from a validated inventory to files.

``render_all`` returns ``{path relative to the config root: content}``; see labctl.layout.
"""

from __future__ import annotations

from labctl.inventory import Inventory
from labctl.layout import Layout
from labctl.render.gateway import render_gateway
from labctl.render.monitoring import render_monitoring
from labctl.render.units import render_units


def render_all(inv: Inventory) -> dict[str, str]:
    layout = Layout.of(inv)
    files = render_units(inv, layout)
    gateway = render_gateway(inv)
    if gateway is not None:
        files[layout.litellm_config] = gateway
    files.update(render_monitoring(inv, layout))
    return dict(sorted(files.items()))
