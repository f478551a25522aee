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

from labctl.inventory.load import load_inventory
from labctl.render import gateway, litellm_keys

pytestmark = pytest.mark.integration

SNAPSHOT = Path(litellm_keys.__file__)
ROOT = Path(__file__).resolve().parents[2]

ASK = r"""
import ast, inspect, json, re
from importlib.metadata import version
from pathlib import Path
import litellm
from litellm.constants import ROUTER_SETTINGS_MANAGED_OUTSIDE_CONFIG
from litellm.proxy._types import ConfigGeneralSettings
from litellm.types.router import LiteLLM_Params, ModelInfo
from litellm.types import utils as tutils

root = Path(litellm.__file__).parent
args = set(litellm.Router.get_valid_args()) - set(ROUTER_SETTINGS_MANAGED_OUTSIDE_CONFIG) - {"self"}
providers = sorted({str(getattr(p, "value", p)) for p in litellm.provider_list})
# litellm_settings: the proxy sets each key as an attribute of the litellm module, after
# handling some itself (the keys compared in its litellm_settings loop).
settings = {k for k, v in vars(litellm).items() if not k.startswith("_")
            and not (inspect.ismodule(v) or inspect.isroutine(v) or inspect.isclass(v))}
tree = ast.parse((root / "proxy" / "proxy_server.py").read_text())
for node in ast.walk(tree):
    if isinstance(node, ast.For) and ast.unparse(node.iter) == "litellm_settings.items()":
        for sub in ast.walk(node):
            if isinstance(sub, ast.Compare) and isinstance(sub.left, ast.Name) and sub.left.id == "key":
                for comp in sub.comparators:
                    for c in ast.walk(comp):
                        if isinstance(c, ast.Constant) and isinstance(c.value, str):
                            settings.add(c.value)
general = set(ConfigGeneralSettings.model_fields)
pat = re.compile(r"general_settings(?:\.get\(\s*|\[\s*)[\"']([A-Za-z0-9_]+)[\"']")
for path in (root / "proxy").rglob("*.py"):
    general |= set(pat.findall(path.read_text(errors="replace")))
# A deployment's litellm_params: its own fields, completion()'s parameters, and the
# OpenAI client's request options, which LiteLLM forwards.
params = (set(LiteLLM_Params.model_fields) | {"extra_body", "extra_headers", "extra_query"}
          | {p for p in inspect.signature(litellm.completion).parameters if p not in ("kwargs", "args")})
info = (set(ModelInfo.model_fields) | set(getattr(tutils.ModelInfoBase, "__annotations__", {}))
        | set(getattr(tutils.ModelInfo, "__annotations__", {})))
print(json.dumps({"version": version("litellm"), "router_settings": sorted(args), "providers": providers,
                  "litellm_settings": sorted(settings), "general_settings": sorted(general),
                  "litellm_params": sorted(params), "model_info": sorted(info)}))
"""

HEADER = '''"""What the pinned LiteLLM reads, taken from it (not guessed): the keys of
``router_settings`` are ``Router.__init__``'s parameters (``Router.get_valid_args()``) less
those the proxy manages outside its config file; the proxy logs any other key as "not a
valid argument" and ignores it. ``PROVIDERS`` are the model-string prefixes LiteLLM routes
(``litellm.provider_list``); an unknown one fails on the first request. ``LITELLM_SETTINGS``:
the proxy sets each key as an attribute of the litellm module (any name at all), so the
valid ones are the module's settings plus the keys its loader handles itself.
``GENERAL_SETTINGS``: the proxy's ConfigGeneralSettings fields and every key its code reads
from general_settings. ``LITELLM_PARAMS`` and ``MODEL_INFO``: a deployment's fields.

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
            + block("PROVIDERS", found["providers"]) + block("LITELLM_SETTINGS", found["litellm_settings"])
            + block("GENERAL_SETTINGS", found["general_settings"]) + block("LITELLM_PARAMS", found["litellm_params"])
            + block("MODEL_INFO", found["model_info"]))


def test_snapshot_is_what_the_installed_litellm_reads(litellm_python) -> None:
    found = installed(litellm_python)
    if os.environ.get("LABCTL_UPDATE_LITELLM_KEYS") == "1":
        SNAPSHOT.write_text(snapshot_text(found))
        pytest.skip("snapshot rewritten")
    assert SNAPSHOT.read_text() == snapshot_text(found), \
        "the installed LiteLLM reads other router_settings than labctl's snapshot; regenerate it"


def test_every_key_labctl_writes_is_read(litellm_python) -> None:
    """Over the root inventory and every example, each key rendered in LiteLLM's sections
    and deployments is one the installed LiteLLM reads."""
    found = installed(litellm_python)
    paths = [ROOT / "inventory.yaml", *sorted((ROOT / "examples").glob("*/inventory.yaml"))]
    written: dict[str, set[str]] = {}
    for path in paths:
        inv = load_inventory(str(path), text=path.read_text()).inventory
        for gw in inv.gateways().values():
            cfg = gateway.config(inv, gw)
            for section in ("router_settings", "litellm_settings", "general_settings"):
                written.setdefault(section, set()).update(cfg.get(section, {}))
            for model in cfg["model_list"]:
                written.setdefault("litellm_params", set()).update(model["litellm_params"])
                written.setdefault("model_info", set()).update(model.get("model_info", {}))
    for section, keys in written.items():
        assert keys <= set(found[section]), (section, sorted(keys - set(found[section])))
    assert written["router_settings"] and written["litellm_params"] and written["general_settings"]


def validate_config(litellm_python: Path, config: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(litellm_python), "-m", "litellm.proxy.proxy_cli", "--config", str(config),
                           "--validate_config"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", **env})


def test_litellm_validates_what_labctl_renders(litellm_python, tmp_path) -> None:
    """LiteLLM's own loader (``--validate_config``, which builds the Router from the file)
    accepts the rendered configs, and refuses a value labctl cannot judge (a misspelled
    routing strategy), which is why it runs beside labctl's key checks."""
    from labctl.render import gate

    paths = [ROOT / "inventory.yaml", *sorted((ROOT / "examples").glob("*/inventory.yaml"))]
    # The config loads labctl's drain gate from its own directory (labctl.render.gate).
    (tmp_path / gate.MODULE_FILE).write_text(gate.MODULE)
    for path in paths:
        loaded = load_inventory(str(path), text=path.read_text())
        # A fleet: the gateway's config is rendered from its host's view.
        views = loaded.fleet.views if loaded.fleet is not None else {"": loaded.inventory}
        for host, inv in views.items():
            text = gateway.render_gateway(inv)
            if text is None:
                continue
            env = {ref.variable: "sk-labctl-test" for gw in inv.gateways().values()
                   for ref in inv.gateway_secret_refs(gw) if ref.variable}
            config = tmp_path / f"{path.parent.name}{'-' + host if host else ''}.yaml"
            config.write_text(text)
            proc = validate_config(litellm_python, config, env)
            assert proc.returncode == 0 and "config OK" in proc.stdout, (path, host, proc.stdout[-1500:],
                                                                         proc.stderr[-1500:])
    root = (tmp_path / f"{ROOT.name}.yaml").read_text()  # the root inventory's render
    assert "routing_strategy: simple-shuffle" in root
    bad = tmp_path / "bad.yaml"
    bad.write_text(root.replace("routing_strategy: simple-shuffle", "routing_strategy: simple-shufle"))
    proc = validate_config(litellm_python, bad, {"LITELLM_MASTER_KEY": "sk-labctl-test"})
    assert proc.returncode != 0 and "Invalid routing_strategy" in proc.stdout + proc.stderr


def test_up_asks_the_gateways_own_litellm(litellm_python, tmp_path) -> None:
    """labctl.ops.litellm_validate, which `labctl up` runs before installing a changed config:
    LiteLLM accepts the render, refuses a value only it can judge, and the refusal names
    the inventory field. The keys' variables get placeholders; no key file is read."""
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from invtext import BASE

    from labctl.ops import litellm_validate

    text = BASE.replace("/opt/litellm/bin/python", str(litellm_python)).replace(
        "    fallbacks:\n      bindings: [native]\n",
        "    fallbacks:\n      bindings: [native]\n    router_settings:\n      routing_strategy: simple-shuffle\n")
    inv = load_inventory("inventory.yaml", text=text).inventory
    gw = inv.services["gateway"]
    config = gateway.render_gateway(inv)
    assert config and "os.environ/LITELLM_MASTER_KEY" in config
    verdict = litellm_validate.validate(inv, "gateway", gw, config)
    assert verdict.status == "ok" and verdict.detail == "LiteLLM: config OK (2 models)", verdict
    bad = config.replace("routing_strategy: simple-shuffle", "routing_strategy: simple-shufle")
    verdict = litellm_validate.validate(inv, "gateway", gw, bad)
    assert verdict.refused and "Invalid routing_strategy" in verdict.detail, verdict
    assert litellm_validate.field_of(gw, verdict.detail) == ("router_settings", "routing_strategy")
