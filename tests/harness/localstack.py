"""The integration tier's stack outside pytest: llama-server, llama-cpp-python and a LiteLLM
gateway started on loopback from labctl's rendered units by tests/integration/conftest.py
(build_stack), for scripts that need the real servers running (bench/top_cost.py,
tests/golden/metrics/capture.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from harness import tools

CONFTEST = Path(__file__).resolve().parents[1] / "integration" / "conftest.py"


def conftest() -> ModuleType:
    """tests/integration/conftest.py as a module of its own name (its dataclasses look it up)."""
    name = "integration_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, CONFTEST)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules[name]


def start(root: Path, edit: Any = None) -> Any:
    """The stack (conftest.Stack) under ``root``, on a generated tiny model behind
    current.gguf, every server started and ready. The caller stops it (``stop_all``)."""
    from labctl.host.gguf_writer import write_tiny_gguf

    c = conftest()
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    write_tiny_gguf(models / "tiny.gguf")
    if not (models / "current.gguf").is_symlink():
        (models / "current.gguf").symlink_to("tiny.gguf")
    tool_paths = {"llama_server": tools.TOOLS_DIR / "llama-server/bin/llama-server",
                  "llama_cpp_python": tools.TOOLS_DIR / "llama-cpp-python/bin/python",
                  "litellm_python": tools.TOOLS_DIR / "litellm/bin/python"}
    ports = c.distinct_ports("native", "bindings", "gateway", "prometheus", "grafana")
    stack = c.build_stack(root, models, ports, tool_paths, edit)
    try:
        for name in stack.servers:
            stack.launch(name)
        for name in stack.servers:
            stack.wait_ready(name)
    except BaseException:
        stack.stop_all()
        raise
    return stack
