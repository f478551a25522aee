"""A backend's API key, as its server reads it.

The inventory references a key as an env file and a variable (``api_key: {env_file, var}``),
the variable named per service so that a gateway can load the keys of several backends at
once. Each server reads its key from one fixed variable of its own, so labctl derives a
second 0600 env file beside the reference holding just that variable, and the backend's unit
loads it (``EnvironmentFile=``): the key never appears in argv or in the unit's text.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from labctl.inventory.schema import Inventory, LlamaCppPython, LlamaServer, Vllm
from labctl.text import first_unsafe

# The variable each keyed server reads its key from.
SERVER_VARIABLE = {
    "llama-server": "LLAMA_API_KEY",      # llama.cpp's --api-key
    "vllm": "VLLM_API_KEY",               # vLLM's --api-key
    "llama-cpp-python": "API_KEY",        # llama_cpp.server's ServerSettings.api_key
}


def server_key_file(inv: Inventory, name: str, svc: LlamaServer | LlamaCppPython | Vllm) -> str:
    """Where the derived file lives: beside the reference's env file."""
    assert svc.api_key is not None and svc.api_key.env_file is not None  # checks require an env file
    ref = PurePosixPath(inv.host.expand(svc.api_key.env_file))
    return str(ref.parent / f"{name}-server-key.env")


def server_key_text(kind: str, key: str) -> str:
    if not key or first_unsafe(key) is not None or any(c.isspace() for c in key) or "\\" in key:
        raise ValueError("an API key must be one word of printable characters")
    return f"{SERVER_VARIABLE[kind]}={key}\n"
