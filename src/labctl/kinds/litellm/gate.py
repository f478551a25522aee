"""The gateway's drain gate: a LiteLLM callback that takes a backend out of rotation while
``labctl model switch`` drains and restarts it.

LiteLLM 1.106 has no runtime switch for that without a database (``/model/delete``,
``/model/block`` and ``/model/update`` need ``store_model_in_db``; its cooldowns react to
failures, and health-check routing runs on a background interval). Its public
``CustomLogger.async_filter_deployments`` hook runs for every request, so the rendered
config loads this module (``litellm_settings.callbacks``, from the config's directory) and
it drops every deployment whose backend has an open gate: a file
``$XDG_RUNTIME_DIR/labctl/gate/HOST_PORT`` holding a deadline (Unix seconds). A request
for that route then takes its fallback chain at once, without touching the backend.

A gate past its deadline is ignored, so a switch killed mid-way never keeps a backend out
of rotation for longer than its own timeouts; the runtime dir is a tmpfs, gone at reboot.
"""

from __future__ import annotations

import os
from pathlib import Path

MODULE_FILE = "labctl_gate.py"  # beside the gateway's config.yaml
CALLBACK = "labctl_gate.gate"   # module.instance, as LiteLLM's callbacks list names it

MODULE = '''\
# Rendered by labctl (labctl.kinds.litellm.gate): the drain gate of `labctl model switch`.
# A request skips a backend whose gate file holds a deadline still in the future.
import os
import time

from litellm.integrations.custom_logger import CustomLogger

GATES = os.path.join(os.environ.get("XDG_RUNTIME_DIR") or "/nonexistent", "labctl", "gate")


def gate_name(api_base):
    netloc = str(api_base or "").split("://", 1)[-1].split("/", 1)[0]
    return netloc.replace(":", "_").replace("[", "").replace("]", "")


def closed(deployment):
    name = gate_name((deployment.get("litellm_params") or {}).get("api_base"))
    if not name:
        return False
    try:
        with open(os.path.join(GATES, name), encoding="ascii") as fh:
            return float(fh.read(64).strip() or 0) > time.time()
    except (OSError, ValueError):
        return False


class Gate(CustomLogger):
    async def async_filter_deployments(self, model, healthy_deployments, messages,
                                       request_kwargs=None, parent_otel_span=None):
        return [d for d in healthy_deployments if not closed(d)]


gate = Gate()
'''


def gate_name(base_url: str) -> str:
    """The gate file's name for a backend's base URL (``http://127.0.0.1:8080`` ->
    ``127.0.0.1_8080``); the same rule as ``gate_name`` in :data:`MODULE`."""
    netloc = base_url.split("://", 1)[-1].split("/", 1)[0]
    return netloc.replace(":", "_").replace("[", "").replace("]", "")


def gate_dir(env: dict[str, str] | None = None) -> Path:
    """Where the gates live for the user manager whose environment is ``env``."""
    runtime = (env if env is not None else os.environ).get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return Path(runtime) / "labctl" / "gate"
