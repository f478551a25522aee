"""The ops layer: what each command does, built from the inventory, the renderers and the
host layer (``apply`` is up/down/restart/rollback, ``status``, ``doctor``, ``switch``,
``gateway_check``, ``monitoring``...). The CLI calls these; nothing here imports the CLI."""
