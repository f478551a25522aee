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
