"""The one place that decides whether a path can be handed to Ansible or ssh as itself.

A fleet is applied by ``ansible-playbook`` on the controller, which runs ``ssh`` to each
host and Ansible's modules there. Each of them reads more into a path than the one file it
names, and none offers an escape that all of them honour, so a path that holds such a
character is refused: by the inventory schema first (``file:line: field: ...``, exit 2,
before anything runs), and again at every hand-over point in labctl.fleet, where it is a
labctl bug or the controller's own environment (``$HOME``, ``$TMPDIR``, where labctl is
installed) and raises :class:`EncodeError`.

What each consumer reads (ansible-core 2.19's own code, ssh_config(5)):

- ``ANSIBLE``, Ansible's path settings on the controller (``ANSIBLE_HOME``,
  ``ANSIBLE_LOCAL_TEMP``, ``ANSIBLE_PRIVATE_KEY_FILE``, ``ANSIBLE_CALLBACK_PLUGINS``,
  ``ANSIBLE_SSH_CONTROL_PATH_DIR``, an ``-i`` inventory source) and a controller file a
  module's action reads (copy's and unarchive's ``src``): ``config.manager.resolve_path``
  replaces ``{{CWD}}`` with the current directory; ``utils.path.unfrackpath`` expands
  ``$VAR``/``${VAR}`` and a leading ``~`` and resolves a relative path against the current
  directory; a *pathlist* (``ANSIBLE_INVENTORY``; ``-i`` when the file is missing) is split
  at ``,``, a *pathspec* (the plugin paths, every default derived from ``ANSIBLE_HOME``
  among them) at ``:``;
- ``SSH``, ssh's options (``UserKnownHostsFile=`` in ssh_args, the ``IdentityFile="..."``
  Ansible writes for the key, ``ControlPath``): ``%`` tokens (``%d``, ``%u``, ``%%``),
  ``${VAR}``, a leading ``~``; whitespace separates several files, ``#`` after whitespace
  starts a comment, quotes and backslashes are the option parser's own;
- ``HOST``, Ansible's modules on a host: a *path* argument (file's ``path``, copy's and
  unarchive's ``dest``) goes through ``expandvars`` and ``expanduser`` there, and command's
  ``creates``/``removes`` are glob patterns. (command's argv is literal: labctl's playbooks
  set ``expand_argument_vars: false``.)

A ``~`` is refused everywhere but as the leading ``~/`` of an inventory path, which labctl
expands itself: every consumer above expands a ``~`` that starts a path, and after any split
one would.
"""

from __future__ import annotations

import os

from labctl.encode import EncodeError
from labctl.text import describe, first_unsafe

ANSIBLE = "Ansible"
SSH = "ssh"
HOST = "Ansible's modules on a host"

_WHITESPACE = " \t\n\r\v\f"
_HOME = ("~", "only a leading ~/ names a home (labctl expands it); Ansible and ssh would expand any ~ "
              "that starts a path")
_VARS = "$"

# consumer -> (characters, why that consumer reinterprets them)
READS: dict[str, tuple[tuple[str, str], ...]] = {
    ANSIBLE: (
        (",", "Ansible splits its inventory sources at ','"),
        (":", "Ansible splits its plugin paths (and every one derived from ANSIBLE_HOME) at ':'"),
        (_VARS, "Ansible expands $VAR and ${VAR} in a path"),
        ("{}", "Ansible replaces {{CWD}} in a path setting with the current directory"),
        _HOME,
    ),
    SSH: (
        ("%", "ssh expands %-tokens such as %d and %u in its file options"),
        (_VARS, "ssh expands ${VAR} in its file options"),
        (_WHITESPACE, "ssh reads whitespace in a file option as a separator between files"),
        ("#", "ssh reads '#' as the start of a comment"),
        ("\"'\\", "ssh's option parser reads quotes and backslashes"),
        _HOME,
    ),
    HOST: (
        (_VARS, "Ansible's modules expand $VAR and ${VAR} in a path on the host"),
        ("*?[]", "Ansible's command module reads a path as a glob pattern (creates/removes)"),
        _HOME,
    ),
}


def _name(ch: str) -> str:
    return describe(ch) if not ch.isprintable() or ch.isspace() else repr(ch)


def path_problem(path: str, *consumers: str) -> str | None:
    """Why ``path`` (absolute, as labctl hands it over) would not reach ``consumers`` as itself,
    or None."""
    found = first_unsafe(path)
    if found is not None:
        return f"holds {describe(found[1])}, which no path handed to {' or '.join(consumers)} may hold"
    if not path.startswith("/"):
        return "must be absolute: Ansible resolves a relative path against the current directory"
    for consumer in consumers:
        for chars, why in READS[consumer]:
            hit = next((ch for ch in path if ch in chars), None)
            if hit is not None:
                return f"must not hold {_name(hit)}: {why}"
    return None


def hand_over(path: str | os.PathLike[str], *consumers: str) -> str:
    """``path`` as the text handed to ``consumers``; EncodeError when they would read it as
    anything else."""
    text = os.fspath(path)
    problem = path_problem(text, *consumers)
    if problem:
        raise EncodeError(f"{text!r} cannot be handed to {' and '.join(consumers)}: it {problem}")
    return text


def inventory_path_problem(value: str, *consumers: str) -> str | None:
    """:func:`path_problem` for an inventory's spelling of a path (absolute, or ``~/...``, whose
    ``~`` labctl expands before handing the path over)."""
    return path_problem(value[1:] if value.startswith("~/") else value, *consumers)
