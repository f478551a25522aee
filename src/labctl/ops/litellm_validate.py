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

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from labctl.host.proc import CommandFailed, CommandTimeout, run_cmd
from labctl.inventory.schema import Inventory, LiteLLM
from labctl.render import gate
from labctl.render.layout import Layout
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
        # The config loads the drain gate from its own directory (labctl.render.gate).
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
