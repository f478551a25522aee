"""Renderers: pure, deterministic functions from a validated inventory to files.

``render_all`` returns ``{path relative to the config root: content}``; see
labctl.inventory.layout. How each value is written into each kind of file is decided in one
place, labctl.encode, which the inventory schema also uses to refuse what cannot be written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labctl.inventory.schema import Inventory


def render_all(inv: Inventory) -> dict[str, str]:
    """Every file: each managed service's unit and its kind's own files (the gateway's
    config, Redis's), and the monitoring stack's."""
    from labctl.inventory.layout import Layout
    from labctl.kinds import kind_of
    from labctl.render.monitoring import render_monitoring
    from labctl.render.units import render_units

    layout = Layout.of(inv)
    files = render_units(inv, layout)
    for name, svc in inv.managed().items():
        files.update(kind_of(svc).files(inv, name, svc, layout))
    files.update(render_monitoring(inv, layout))
    return dict(sorted(files.items()))
