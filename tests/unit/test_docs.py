"""docs/inventory.md's key tables are generated from the schema and must stay equal."""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from labctl.inventory.docgen import reference
from labctl.load import load_inventory
from labctl.render import render_all
from labctl.kinds.litellm import config as gateway

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


def test_the_external_backend_example_validates() -> None:
    """docs/inventory.md's external Ollama, in place of the root inventory's own: no unit
    for it, the gateway still routes to it, and the unit is not ordered after it."""
    doc = DOC.read_text()
    section = doc[doc.index("## Backends labctl does not run"):doc.index("## A mixed local and cloud gateway")]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    root = (ROOT / "inventory.yaml").read_text()
    start, end = root.index("  ollama:\n"), root.index("  llama-cpp:\n")
    inv = load_inventory("inventory.yaml", text=root[:start] + example + "\n" + root[end:]).inventory
    assert inv.services["ollama"].kind == "external" and "ollama" not in inv.managed()
    files = render_all(inv)
    assert "systemd/user/labctl-ollama.service" not in files
    assert "labctl-ollama" not in files["systemd/user/labctl-gateway.service"]
    cfg = yaml.safe_load(files["labctl/litellm/config.yaml"])
    ollama_routes = [m["litellm_params"] for m in cfg["model_list"]
                     if m["litellm_params"]["api_base"] == "http://127.0.0.1:11434"]
    assert ollama_routes and all(p["model"].startswith("ollama_chat/") for p in ollama_routes)
