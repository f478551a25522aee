"""Which environment variables a string in the LiteLLM config makes LiteLLM read.

LiteLLM replaces ``os.environ/NAME`` in its config with the variable's value, in several
places, each its own way (LiteLLM 1.106.2, read from its code):

- the proxy's config loader (``ProxyConfig._check_for_os_environ_vars``: every section,
  nested mappings included), the Router's ``litellm_params``, the cache's and callbacks'
  parameters, guardrails: a whole value that *starts* with ``os.environ/``;
- pass-through endpoints' ``headers`` (``set_env_variables_in_header``): a value that
  *contains* it anywhere. Everything from the first ``os.environ/`` to the end is the
  reference and the text before it stays, so ``Bearer os.environ/NAME`` sends
  ``Bearer <value>`` to the endpoint's target, another host;
- Slack alerting's webhook URLs: a value that contains it, the whole value looked up.

Every one of them ends in ``get_secret``, which deletes *every* ``os.environ/`` from a name
that starts with one (``os.environ/os.environ/NAME`` reads ``NAME``; a header's
``Bearer os.environ/LITELLM_os.environ/MASTER_KEY`` reads ``LITELLM_MASTER_KEY``) and looks
any other name up as it is; and it reads a name starting ``oidc/`` as no variable at all:
``oidc/env/NAME`` returns ``NAME``'s value, ``oidc/file/...`` and ``oidc/env_path/NAME``
read files. tests/integration/test_litellm_env.py runs these through LiteLLM's own code.

labctl does not try to know which place reads a value which way: :func:`lookups` is the
union of them, so a string is judged by every way LiteLLM could read it.
"""

from __future__ import annotations

import re
from typing import Any

REF = "os.environ/"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def lookups(text: str) -> list[str]:
    """The names LiteLLM may look up for ``text``: none when it holds no reference; else
    the name a header reads (from the first ``os.environ/`` on), then the name a lookup of
    the whole value reads, each as ``get_secret`` turns it into a name."""
    if REF not in text:
        return []
    return list(dict.fromkeys([_secret_name(text[text.index(REF):]), _secret_name(text)]))


def _secret_name(reference: str) -> str:
    return reference.replace(REF, "") if reference.startswith(REF) else reference


def variable(text: str) -> str | None:
    """The one variable a well-formed reference reads: ``os.environ/NAME`` ends the value
    (alone, or after literal text as in ``Bearer os.environ/NAME``), NAME a variable name,
    and no other way of reading it is an OIDC lookup. None when ``text`` holds no reference
    or one that LiteLLM would read some other way."""
    names = lookups(text)
    if not names or not _NAME.fullmatch(names[0]) or any(n.startswith("oidc/") for n in names):
        return None
    return names[0]


def strings(node: Any, where: tuple) -> list[tuple[tuple, str]]:
    """Every string in a piece of LiteLLM config (mapping keys aside: LiteLLM reads no
    reference there), with where it is below ``where``."""
    if isinstance(node, str):
        return [(where, node)]
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in strings(v, where + (k,))]
    if isinstance(node, list):
        return [leaf for i, v in enumerate(node) for leaf in strings(v, where + (i,))]
    return []
