"""labctl's record of what LiteLLM reads is the installed LiteLLM's own answer.

``labctl/data/litellm/VERSION.json`` (labctl.kinds.litellm.setting_keys) holds the lists taken from the
pinned LiteLLM; this test asks the installed one again (labctl.ops.litellm_validate.ask:
``Router.get_valid_args()`` minus the settings the proxy manages outside the config file,
exactly the filter the proxy applies to ``router_settings``; ``litellm.provider_list``; ...)
and fails on any difference. ``LABCTL_UPDATE_LITELLM_KEYS=1`` rewrites the file instead.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from labctl.load import load_inventory
from labctl.ops import litellm_validate
from labctl.kinds.litellm import config as gateway
from labctl.kinds.litellm import gateway_secret_refs
from labctl.kinds.litellm import setting_keys as litellm_keys

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def installed(litellm_python: Path) -> dict:
    """What the installed LiteLLM reads, asked of it the way `labctl up` asks a gateway's."""
    return litellm_validate.ask(litellm_python).as_dict()


def test_shipped_lists_are_what_the_installed_litellm_reads(litellm_python) -> None:
    found = litellm_validate.ask(litellm_python)
    path = litellm_keys.data_file(found.version)
    if os.environ.get("LABCTL_UPDATE_LITELLM_KEYS") == "1":
        path.write_text(found.text())
        pytest.skip(f"{path} written")
    assert found.version == litellm_keys.LITELLM_VERSION, "the tool venv's LiteLLM is not the pinned one"
    assert path.read_text() == found.text(), \
        "the installed LiteLLM reads other keys than labctl's shipped lists; regenerate them"


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
    from labctl.kinds.litellm import gate

    paths = [ROOT / "inventory.yaml", *sorted((ROOT / "examples").glob("*/inventory.yaml"))]
    # The config loads labctl's drain gate from its own directory (labctl.kinds.litellm.gate).
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
                   for ref in gateway_secret_refs(inv, gw) if ref.variable}
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
    from harness.invtext import BASE

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


def other_version_venv(litellm_python: Path, tmp: Path, version: str) -> Path:
    """A venv whose LiteLLM says it is ``version``: its interpreter is the tool venv's, and its
    site-packages holds that version's metadata and a .pth to the real LiteLLM (the code
    asked is the real one; only its version differs from the one labctl ships lists for)."""
    real_site = next(litellm_python.parent.parent.glob("lib/python3*/site-packages"))
    venv = tmp / "venv"
    site = venv / "lib" / real_site.parent.name / "site-packages"
    (site / f"litellm-{version}.dist-info").mkdir(parents=True)
    (site / f"litellm-{version}.dist-info" / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: litellm\nVersion: {version}\n")
    (site / "real.pth").write_text(f"{real_site}\n")
    (venv / "bin").mkdir()
    (venv / "bin" / "python").symlink_to(os.path.realpath(litellm_python))
    home = (litellm_python.parent.parent / "pyvenv.cfg").read_text()
    (venv / "pyvenv.cfg").write_text(home)
    return venv / "bin" / "python"


def test_up_judges_settings_by_the_installed_litellms_own_lists(litellm_python, tmp_path, monkeypatch) -> None:
    """A gateway whose venv holds another LiteLLM than the one labctl ships lists for: `up`
    asks that LiteLLM which keys it reads (once; cached) and judges the pass-through settings
    by them. The control: with the shipped lists made to lack a key, the load checks refuse
    it, and `up`'s check (the installed LiteLLM, which reads it) accepts it; a key no LiteLLM
    reads is refused naming the installed version."""
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from harness.invtext import BASE

    from labctl.errors import InvalidInventory
    from labctl.inventory.layout import Layout
    from labctl.load import Loaded
    from labctl.ops.apply import check_gateway_settings

    python = other_version_venv(litellm_python, tmp_path, "9.9.9")
    assert litellm_validate.installed_version(python) == "9.9.9"
    said: list[str] = []

    def loaded_with(setting: str) -> Loaded:
        text = BASE.replace("/opt/litellm/bin/python", str(python)).replace(
            "    fallbacks:\n      bindings: [native]\n",
            f"    fallbacks:\n      bindings: [native]\n    litellm_settings:\n      {setting}: 1\n")
        text = text.replace("  user: labuser\n", f"  user: labuser\n  home: {tmp_path}\n")
        return load_inventory("inventory.yaml", text=text)

    loaded = loaded_with("request_timeout")
    layout = Layout.of(loaded.inventory)
    check_gateway_settings(loaded, layout, said.append)
    assert said == ["gateway: LiteLLM 9.9.9 is installed; its settings are judged by its own lists"]
    cache = Path(layout.state_dir) / "litellm-keys.json"
    assert cache.stat().st_mode & 0o777 == 0o600 and '"9.9.9"' in cache.read_text()
    shipped = litellm_keys.shipped()

    def pinned(litellm_settings: frozenset[str]) -> litellm_keys.KeySets:
        fields = {s: getattr(shipped, s) for s in ("version", *litellm_keys.SECTIONS)}
        return litellm_keys.KeySets(**{**fields, "litellm_settings": litellm_settings})

    # The pinned lists with a key the installed LiteLLM does not read: the load accepts it,
    # up refuses it, naming the installed version.
    monkeypatch.setattr(litellm_keys, "shipped", lambda version=None: pinned(shipped.litellm_settings | {"request_timeot"}))
    with pytest.raises(InvalidInventory) as info:
        check_gateway_settings(loaded_with("request_timeot"), layout, said.append)
    (line,) = info.value.lines()
    assert "litellm_settings.request_timeot: 'request_timeot' is not a litellm_settings key LiteLLM 9.9.9 " \
           "reads" in line and "did you mean 'request_timeout'" in line, line
    # The pinned lists without a key the installed LiteLLM reads: the load refuses it, up's
    # check (the installed LiteLLM's lists, from the cache now) accepts it.
    monkeypatch.setattr(litellm_keys, "shipped", lambda version=None: pinned(shipped.litellm_settings - {"request_timeout"}))
    with pytest.raises(InvalidInventory):
        loaded_with("request_timeout")
    from labctl.kinds.litellm import checks as litellm_checks

    gw = loaded.inventory.gateways()["gateway"]
    assert list(litellm_checks.settings(loaded.inventory, "gateway", gw, litellm_keys.shipped()))
    assert not list(litellm_checks.settings(loaded.inventory, "gateway", gw,
                                            litellm_validate.installed_keys(python, cache)))
