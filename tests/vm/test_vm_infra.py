"""The testinfra suite of tests/infra/test_stack.py, unchanged, pointed at the VM.

Its ``host`` fixture reaches ``demo_stack.machine`` over paramiko with the machine's
ssh_config; in this directory ``demo_stack`` is the VM's stack (tests/vm/conftest.py), so
every check (units owned, enabled and active, loopback-only ports, current.gguf, the gateway
answering each route, the secret's mode, the state dirs) runs against a real kernel.
"""

from __future__ import annotations

import pytest
from infra import test_stack  # tests/ is on the path (pyproject's pythonpath)

pytestmark = pytest.mark.vm

# Every test of the nspawn suite, and its host fixture, collected here too.
globals().update({k: v for k, v in vars(test_stack).items() if k.startswith("test_") or k == "host"})
