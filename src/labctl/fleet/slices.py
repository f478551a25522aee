"""A host's view of a fleet inventory, written as an ordinary inventory file (its slice).

The slice is what the host's own ``labctl up`` loads, through the same loader and checks as
any inventory: it says only what the view says (the fields the operator set, and the ones
the fleet set: binds, keys, stand-ins for backends on other hosts), through PyYAML's safe
dumper, so no value can change the document's structure.
"""

from __future__ import annotations

from typing import Any

import yaml

from labctl.inventory.schema import Inventory

HEADER = ("# A slice of a fleet inventory, written by labctl on the controller for one host; do not edit.\n"
          "# Change the fleet inventory and run `labctl up` there.\n")


def slice_data(view: Inventory) -> dict[str, Any]:
    data = view.model_dump(mode="json", exclude_unset=True)
    data.pop("fleet", None)
    data.pop("hosts", None)
    return data


def slice_text(view: Inventory, *, host: str) -> str:
    body = yaml.safe_dump(slice_data(view), sort_keys=False, allow_unicode=False, width=1000)
    return HEADER + f"# host: {host}\n" + body
