"""labctl: one inventory.yaml, rendered into a local LLM serving stack run by systemd."""

__version__ = "0.1.0"
