"""The shared test harness, one package imported by name (``from harness import stack``).

pyproject's ``[tool.pytest.ini_options] pythonpath`` puts ``tests/`` on the path for every
tier and conftest; bench scripts, which run outside pytest, put it there themselves. No
module here is a test (no ``test_`` prefix): pytest never collects them.

- ``tools``: where the external tools are, and a missing one's skip (or, under CI, failure)
- ``helpers``: processes, free ports and HTTP on loopback
- ``invtext``: a small valid inventory as text, and exact line edits of it
- ``unitfile``: a unit file read back the way systemd reads it
- ``stack``: the CPU demo brought up by ``labctl up`` on a booted systemd machine
- ``fleetlab``: several booted machines on a private network (the fleet tests)
- ``qemu_vm``: the VM tier's qemu VM
- ``docker_engine``: a private dockerd and locally built images (monitoring)
"""
