"""docs/inventory.md's key tables are generated from the schema and must stay equal."""

from __future__ import annotations

import os
import re
from pathlib import Path

from labctl.docgen import reference
from labctl.load import load_inventory
from labctl.render import gateway

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "inventory.md"
BLOCK = re.compile(r"(<!-- BEGIN generated -->\n)(.*)(<!-- END generated -->)", re.S)


def test_inventory_reference_matches_schema() -> None:
    text = DOC.read_text()
    if os.environ.get("LABCTL_UPDATE_DOCS"):
        text = BLOCK.sub(lambda m: m.group(1) + reference() + m.group(3), text)
        DOC.write_text(text)
    match = BLOCK.search(text)
    assert match, "docs/inventory.md lost its generated block markers"
    assert match.group(2) == reference(), "docs/inventory.md is stale: LABCTL_UPDATE_DOCS=1 pytest tests/unit/test_docs.py"


def test_the_mixed_gateway_example_validates() -> None:
    """docs/inventory.md's worked example, in place of the root inventory's gateway."""
    doc = (ROOT / "docs" / "inventory.md").read_text()
    section = doc[doc.index("## A mixed local and cloud gateway"):doc.index("## Keys")]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    root = (ROOT / "inventory.yaml").read_text()
    start, end = root.index("  gateway:\n"), root.index("\nmonitoring:")
    inv = load_inventory("inventory.yaml", text=root[:start] + example.rstrip("\n") + root[end:]).inventory
    gw = inv.services["gateway"]
    assert [r.endpoint for r in gw.routes].count("ollama-cloud") == 2 and "*" in gw.fallbacks
    assert gateway.render_gateway(inv)
