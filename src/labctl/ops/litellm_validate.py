"""LiteLLM's own verdict on a rendered gateway config: ``proxy_cli --config F --validate_config``.

labctl's checks know which keys LiteLLM reads; only LiteLLM knows which *values* it takes
(a misspelled ``routing_strategy`` passes every key check and fails here). ``labctl up``
asks the gateway's own interpreter before it installs a changed config, so a config the
gateway would refuse at start is never installed.

The gateway's secrets are never needed for this: every ``os.environ/VAR`` the config
names is set to a placeholder in the child's environment, and the real key files are not
read. The child runs in a scratch directory with a scratch HOME, so it writes nothing of
the operator's.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from labctl.host.proc import CommandFailed, CommandTimeout, run_cmd
from labctl.inventory.schema import Inventory
from labctl.kinds.litellm import LiteLLM
from labctl.kinds.litellm import gate
from labctl.kinds.litellm import setting_keys as litellm_keys
from labctl.inventory.layout import Layout
from labctl.render.units import environment

PLACEHOLDER = "labctl-validate-placeholder"
_ENV_REF = re.compile(r"os\.environ/([A-Za-z_][A-Za-z0-9_]*)")
_FAILED = "config validation failed:"


@dataclass(frozen=True)
class Verdict:
    status: str      # "ok", "refused", "unsupported" (this LiteLLM has no --validate_config), "unknown"
    detail: str      # one line

    @property
    def refused(self) -> bool:
        return self.status == "refused"


def validate(inv: Inventory, name: str, gw: LiteLLM, config_text: str, *, timeout: float = 180) -> Verdict:
    python = gw.runtime.interpreter(inv.host)
    if not Path(python).exists():
        return Verdict("unknown", f"{python} does not exist")
    with tempfile.TemporaryDirectory(prefix="labctl-validate-") as scratch:
        config = Path(scratch) / "config.yaml"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(config_text)
        # The config loads the drain gate from its own directory (labctl.kinds.litellm.gate).
        (Path(scratch) / gate.MODULE_FILE).write_text(gate.MODULE)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": scratch, "LANG": "C.UTF-8"}
        env.update(environment(inv, name, gw, Layout.of(inv)))
        env.update({var: PLACEHOLDER for var in _ENV_REF.findall(config_text)})
        argv = [python, "-m", "litellm.proxy.proxy_cli", "--config", str(config), "--validate_config"]
        try:
            res = run_cmd(argv, check=False, timeout=timeout, env=env, cwd=scratch)
        except CommandTimeout:
            return Verdict("unknown", f"LiteLLM's --validate_config gave no verdict within {timeout:g}s")
        except CommandFailed as exc:
            return Verdict("unknown", str(exc))
    text = res.stdout + res.stderr
    if res.rc == 0 and "config OK" in text:
        return Verdict("ok", next(line.strip() for line in text.splitlines() if "config OK" in line))
    if "--validate_config" in text and "no such option" in text.lower():
        return Verdict("unsupported", "this LiteLLM has no --validate_config")
    failed = [line.split(_FAILED, 1)[1].strip() for line in text.splitlines() if _FAILED in line]
    if failed:
        return Verdict("refused", failed[-1][:300])
    last = [line.strip() for line in text.splitlines() if line.strip()]
    return Verdict("refused" if res.rc != 0 else "unknown", (last[-1] if last else f"exit status {res.rc}")[:300])


def field_of(gw: LiteLLM, detail: str) -> tuple[str, ...]:
    """The pass-through setting a refusal names, when it names one (``Invalid
    routing_strategy`` -> router_settings.routing_strategy); else the gateway itself."""
    for section in ("router_settings", "litellm_settings", "general_settings"):
        for key in getattr(gw, section):
            if re.search(rf"\b{re.escape(key)}\b", detail):
                return (section, key)
    return ()


# Run by a LiteLLM venv's own interpreter: it prints the key sets of the LiteLLM installed there.
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


def ask(python: str | Path, *, timeout: float = 300) -> litellm_keys.KeySets:
    """The key sets of the LiteLLM installed for ``python`` (a venv's interpreter), asked of
    it: it imports LiteLLM, so it takes seconds. Raises CommandFailed when that fails."""
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    res = run_cmd([str(python), "-c", ASK], timeout=timeout, env=env)
    try:
        return litellm_keys.KeySets.from_dict(json.loads(res.stdout.strip().splitlines()[-1]))
    except (IndexError, ValueError, KeyError, TypeError):
        raise CommandFailed(f"{python} printed no key lists") from None


def installed_version(python: str | Path) -> str | None:
    """The version of the LiteLLM installed for ``python`` (a venv's interpreter), read from
    its package metadata without importing it; None when there is none."""
    venv = Path(python).parent.parent
    for meta in sorted(venv.glob("lib/python3*/site-packages/litellm-*.dist-info/METADATA")):
        try:
            for line in meta.read_text(errors="replace").splitlines():
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
                if not line:
                    break
        except OSError:
            continue
    return None


def installed_keys(python: str | Path, cache: Path) -> litellm_keys.KeySets | None:
    """The key lists of the LiteLLM installed for ``python`` when it is another version than
    the one labctl ships lists for (asked of it: seconds, so kept in ``cache``, keyed on the
    interpreter, the version and its site-packages' mtime); None when it is the shipped
    version or none is installed (the shipped lists apply)."""
    version = installed_version(python)
    if version is None or version in litellm_keys.shipped_versions():
        return litellm_keys.shipped(version) if version is not None else None
    site = sorted(Path(python).parent.parent.glob("lib/python3*/site-packages"))
    key = {"python": str(python), "version": version, "mtime": site[0].stat().st_mtime if site else 0}
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return litellm_keys.KeySets.from_dict(cached["keys"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = ask(python)
    try:
        from labctl import fsio

        fsio.atomic_write(cache, json.dumps({"key": key, "keys": found.as_dict()}), mode=0o600)
    except OSError:
        pass  # an unwritable state dir costs the next run some seconds, nothing more
    return found
