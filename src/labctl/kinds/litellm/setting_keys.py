"""What a LiteLLM version reads, taken from it (not guessed), kept as data.

One JSON file per LiteLLM version in ``labctl/data/litellm/VERSION.json``, written by
:func:`ask` from that LiteLLM itself:

- ``router_settings``: ``Router.__init__``'s parameters (``Router.get_valid_args()``) less those
  the proxy manages outside its config file; the proxy logs any other key as "not a valid
  argument" and ignores it;
- ``providers``: the model-string prefixes LiteLLM routes (``litellm.provider_list``); an
  unknown one fails on the first request;
- ``litellm_settings``: the proxy sets each key as an attribute of the litellm module (any name
  at all), so the valid ones are the module's settings plus the keys its loader handles itself;
- ``general_settings``: the proxy's ConfigGeneralSettings fields and every key its code reads
  from general_settings;
- ``litellm_params`` and ``model_info``: a deployment's fields.

labctl ships the lists of the LiteLLM it pins (:data:`LITELLM_VERSION`). An operator who pins
another LiteLLM is checked against that one's own lists: ``labctl up`` asks the gateway's
installed LiteLLM (labctl.ops.litellm_validate.ask, a few seconds, cached) when its version
differs. tests/integration/test_litellm_setting_keys.py compares the shipped file with what the tool
venv's LiteLLM answers; after upgrading the pinned LiteLLM, ``LABCTL_UPDATE_LITELLM_KEYS=1`` on
that test writes the new version's file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

LITELLM_VERSION = "1.106.2"
DATA = Path(__file__).resolve().parents[2] / "data" / "litellm"
SECTIONS = ("router_settings", "providers", "litellm_settings", "general_settings", "litellm_params", "model_info")


@dataclass(frozen=True)
class KeySets:
    """The keys one LiteLLM version reads, per section."""

    version: str
    router_settings: frozenset[str]
    providers: frozenset[str]
    litellm_settings: frozenset[str]
    general_settings: frozenset[str]
    litellm_params: frozenset[str]
    model_info: frozenset[str]

    @classmethod
    def from_dict(cls, doc: dict[str, object]) -> "KeySets":
        return cls(str(doc["version"]), *(frozenset(doc[s]) for s in SECTIONS))  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, object]:
        return {"version": self.version, **{s: sorted(getattr(self, s)) for s in SECTIONS}}

    def text(self) -> str:
        """The data file's text: one key a line, sorted, so a regeneration diffs clearly."""
        return json.dumps(self.as_dict(), indent=1) + "\n"


def data_file(version: str) -> Path:
    return DATA / f"{version}.json"


@cache
def shipped(version: str = LITELLM_VERSION) -> KeySets:
    """The lists labctl ships for ``version`` (the pinned one unless named)."""
    return KeySets.from_dict(json.loads(data_file(version).read_text()))


def shipped_versions() -> list[str]:
    return sorted(p.stem for p in DATA.glob("*.json"))


# The pinned version's lists, as the checks and the renderer read them.
ROUTER_SETTINGS = shipped().router_settings
PROVIDERS = shipped().providers
LITELLM_SETTINGS = shipped().litellm_settings
GENERAL_SETTINGS = shipped().general_settings
LITELLM_PARAMS = shipped().litellm_params
MODEL_INFO = shipped().model_info
