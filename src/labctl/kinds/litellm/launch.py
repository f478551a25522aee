"""How the gateway's unit starts LiteLLM: a small launcher rendered beside its config.

LiteLLM 1.106's proxy always asks uvicorn for uvloop (``ProxyInitializationHelpers.
get_loop_type`` returns ``"uvloop"`` on Linux), and no option or variable changes that. In
the fleet system test, uvloop 0.23.0 crashed the gateway with a segfault in uvloop's
``loop.cpython-311-x86_64-linux-gnu.so`` (kernel log: ``segfault at 0 ... error 6``) while a
backend host was powered off under load: every request failed until systemd had restarted
it. The launcher runs the same entry point as ``python -m litellm.proxy.proxy_cli``, with
the same arguments, on the standard library's asyncio loop. If the pinned LiteLLM lacks that
hook, the launcher still starts it, unchanged.
"""

from __future__ import annotations

MODULE_FILE = "labctl_litellm.py"  # beside the gateway's config.yaml

MODULE = '''\
# Rendered by labctl (labctl.kinds.litellm.launch): LiteLLM's proxy, exactly as
# `python -m litellm.proxy.proxy_cli ARGS` runs it, on the standard library's asyncio
# event loop instead of uvloop (which has segfaulted the gateway under backend failures).
import sys

from litellm.proxy import proxy_cli

helpers = getattr(proxy_cli, "ProxyInitializationHelpers", None)
if helpers is not None and callable(getattr(helpers, "get_loop_type", None)):
    helpers.get_loop_type = staticmethod(lambda: "asyncio")

if __name__ == "__main__":
    sys.exit(proxy_cli.run_server())
'''
