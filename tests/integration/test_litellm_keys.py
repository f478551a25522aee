"""labctl's record of what LiteLLM reads is the installed LiteLLM's own answer.

``labctl.render.litellm_keys`` is a snapshot taken from the pinned LiteLLM; this test asks
the installed one again (``Router.get_valid_args()`` minus the settings the proxy manages
outside the config file, exactly the filter the proxy applies to ``router_settings``; and
``litellm.provider_list``) and
fails on any difference. ``LABCTL_UPDATE_LITELLM_KEYS=1`` rewrites the snapshot instead.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from labctl.render import gateway, litellm_keys
from labctl.load import load_inventory

pytestmark = pytest.mark.integration

SNAPSHOT = Path(litellm_keys.__file__)
ROOT = Path(__file__).resolve().parents[2]

ASK = r"""
import json
from importlib.metadata import version
import litellm
from litellm.constants import ROUTER_SETTINGS_MANAGED_OUTSIDE_CONFIG
args = set(litellm.Router.get_valid_args()) - set(ROUTER_SETTINGS_MANAGED_OUTSIDE_CONFIG) - {"self"}
providers = sorted({str(getattr(p, "value", p)) for p in litellm.provider_list})
print(json.dumps({"version": version("litellm"), "router_settings": sorted(args), "providers": providers}))
"""

HEADER = '''"""What the pinned LiteLLM reads, taken from it (not guessed): the keys of
``router_settings`` are ``Router.__init__``'s parameters (``Router.get_valid_args()``) less
those the proxy manages outside its config file; the proxy logs any other key as "not a
valid argument" and ignores it. ``PROVIDERS`` are the model-string prefixes LiteLLM routes
(``litellm.provider_list``); an unknown one fails on the first request.

tests/integration/test_litellm_keys.py compares this with the installed LiteLLM; after a
LiteLLM upgrade, regenerate it with `LABCTL_UPDATE_LITELLM_KEYS=1` on that test.
"""
'''


def installed(litellm_python: Path) -> dict:
    proc = subprocess.run([str(litellm_python), "-c", ASK], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def snapshot_text(found: dict) -> str:
    def block(name: str, items: list[str]) -> str:
        body = "".join(f'    "{item}",\n' for item in items)
        return f"\n{name} = frozenset({{\n{body}}})\n"

    return (f'{HEADER}\nLITELLM_VERSION = "{found["version"]}"\n' + block("ROUTER_SETTINGS", found["router_settings"])
            + block("PROVIDERS", found["providers"]))


def test_snapshot_is_what_the_installed_litellm_reads(litellm_python) -> None:
    found = installed(litellm_python)
    if os.environ.get("LABCTL_UPDATE_LITELLM_KEYS") == "1":
        SNAPSHOT.write_text(snapshot_text(found))
        pytest.skip("snapshot rewritten")
    assert SNAPSHOT.read_text() == snapshot_text(found), \
        "the installed LiteLLM reads other router_settings than labctl's snapshot; regenerate it"


def test_every_router_key_labctl_writes_is_read(litellm_python) -> None:
    """Over the root inventory and every example, each router_settings key rendered is one
    the installed LiteLLM passes to its Router."""
    found = set(installed(litellm_python)["router_settings"])
    paths = [ROOT / "inventory.yaml", *sorted((ROOT / "examples").glob("*/inventory.yaml"))]
    written: set[str] = set()
    for path in paths:
        inv = load_inventory(str(path), text=path.read_text()).inventory
        for gw in inv.gateways().values():
            written |= set(gateway.config(inv, gw)["router_settings"])
    assert written and written <= found, sorted(written - found)
