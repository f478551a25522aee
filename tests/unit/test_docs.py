"""docs/inventory.md's key tables are generated from the schema and must stay equal."""

from __future__ import annotations

import os
import re
from pathlib import Path

from labctl.docgen import reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "inventory.md"
BLOCK = re.compile(r"(<!-- BEGIN generated -->\n)(.*)(<!-- END generated -->)", re.S)


def test_inventory_reference_matches_schema() -> None:
    text = DOC.read_text()
    if os.environ.get("LABCTL_UPDATE_DOCS"):
        text = BLOCK.sub(lambda m: m.group(1) + reference() + m.group(3), text)
        DOC.write_text(text)
    match = BLOCK.search(text)
    assert match, "docs/inventory.md lost its generated block markers"
    assert match.group(2) == reference(), "docs/inventory.md is stale: LABCTL_UPDATE_DOCS=1 pytest tests/unit/test_docs.py"
