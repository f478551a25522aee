"""A small valid inventory as text, for tests that edit it line by line.

Line numbers matter: the bad-inventory tests assert them. Keep edits at the end or
update the expected lines in tests/unit/test_bad_inventories.py.
"""

BASE = """\
version: 1
host:
  user: labuser
  gpu: false
services:
  native:
    kind: llama-server
    binary: /opt/llama/bin/llama-server
    port: 8080
    alias: native
    n_gpu_layers: 0
    ctx_size: 2048
  bindings:
    kind: llama-cpp-python
    runtime:
      python: /opt/llama-cpp-python/bin/python
    port: 8000
    alias: bindings
    n_gpu_layers: 0
  gateway:
    kind: litellm
    runtime:
      python: /opt/litellm/bin/python
    port: 4000
    routes:
      - name: native
        service: native
      - name: bindings
        service: bindings
    fallbacks:
      bindings: [native]
monitoring:
  enabled: true
"""

VLLM = """\
  coder:
    kind: vllm
    runtime:
      python: /opt/vllm/bin/python
    port: 8001
    model: /srv/models/tiny-awq
    served_model_name: coder
    quantization: awq
    dtype: float16
    device: cpu
    cpu_kv_cache_gib: 1
"""


def edit(*pairs: tuple[str, str], base: str = BASE) -> str:
    """Apply exact, single-occurrence replacements (so a stale edit fails loudly)."""
    text = base
    for old, new in pairs:
        assert text.count(old) == 1, f"edit target occurs {text.count(old)} times: {old!r}"
        text = text.replace(old, new)
    return text


def with_service(block: str, base: str = BASE) -> str:
    """Insert a service block at the end of ``services:`` (before ``monitoring:``)."""
    return edit(("monitoring:\n", block + "monitoring:\n"), base=base)
