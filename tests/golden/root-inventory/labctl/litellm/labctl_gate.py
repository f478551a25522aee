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
