"""Checks that need the whole inventory, not one field.

Each check returns InputErrors pointing at the line the operator must change. The list
is exhaustive on purpose: an operator fixing a file wants every problem at once.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel

from labctl import litellm_env, secretscan
from labctl.errors import InputError
from labctl.fields import CommandLine, PublicByShape, mem_bytes
from labctl.host import gguf_header
from labctl.inventory.schema import Inventory
from labctl.inventory.yamlsrc import Source
from labctl.kinds import kind_of
from labctl.kinds.base import Listener


def cross_check(inv: Inventory, src: Source, *, check_files: bool = False) -> list[InputError]:
    errors: list[InputError] = []
    for check in (_ports, _binds, _extra_args, _environment, _kinds, _hardening, _gateways, _images, _monitoring,
                  _models):
        errors.extend(check(inv, src))
    if check_files:
        errors.extend(file_problems(inv, src))
    return errors


def warnings(inv: Inventory, src: Source) -> list[str]:
    """What is accepted but likely not meant, each as ``file:line: path: message``."""
    return [str(src.error(loc, message)) for name, svc in inv.services.items()
            for loc, message in kind_of(svc).warnings(inv, name, svc)]


def _kinds(inv: Inventory, src: Source) -> Iterator[InputError]:
    """What each service's kind refuses (labctl.kinds: a vLLM on the CPU without its KV
    cache, a gateway route to an undefined model, ...)."""
    for name, svc in inv.services.items():
        for loc, message in kind_of(svc).checks(inv, name, svc):
            yield src.error(loc, message)


def _ports(inv: Inventory, src: Source) -> Iterator[InputError]:
    # Everything labctl runs listens on this host; an external service at an address in the
    # host's private network is another machine (a fleet's backend on another host), whose
    # ports are its own.
    claimed: dict[tuple[str, int], str] = {}

    def claim(port: int, loc: tuple, who: str, where: str = "") -> Iterator[InputError]:
        if (where, port) in claimed:
            yield src.error(loc, f"port {port} is already used by {claimed[(where, port)]}")
        else:
            claimed[(where, port)] = who

    for name, svc in inv.services.items():
        if svc.enabled:
            # A server labctl does not run, at an address in the private network: another machine.
            address = inv.bind_of(svc)
            elsewhere = not kind_of(svc).managed and address != inv.host.bind and _private(inv, address)
            yield from claim(svc.port, ("services", name, "port"), f"services.{name}", address if elsewhere else "")
    mon = inv.monitoring
    if mon.enabled:
        yield from claim(mon.prometheus.port, ("monitoring", "prometheus", "port"), "monitoring.prometheus")
        yield from claim(mon.grafana.port, ("monitoring", "grafana", "port"), "monitoring.grafana")
        if mon.node_exporter.enabled:
            yield from claim(mon.node_exporter.port, ("monitoring", "node_exporter", "port"),
                             "monitoring.node_exporter")
        if mon.gpu_exporter.enabled:
            yield from claim(mon.gpu_exporter.port, ("monitoring", "gpu_exporter", "port"),
                             "monitoring.gpu_exporter")


def _is_loopback(addr: str) -> bool:
    return ipaddress.ip_address(addr).is_loopback


def _private(inv: Inventory, addr: str) -> bool:
    """Inside host.private_network (and not its network or broadcast address)."""
    if inv.host.private_network is None:
        return False
    net, ip = ipaddress.ip_network(inv.host.private_network), ipaddress.ip_address(addr)
    return ip in net and ip not in (net.network_address, net.broadcast_address)


def _binds(inv: Inventory, src: Source) -> Iterator[InputError]:
    if inv.host.allow_public_bind:
        return
    hint = "binding beyond loopback needs host.allow_public_bind: true"
    if inv.host.private_network is not None:
        hint = f"bind to loopback or to an address in host.private_network {inv.host.private_network}, or set " + \
               "host.allow_public_bind: true"
    if not _is_loopback(inv.host.bind) and not _private(inv, inv.host.bind):
        yield src.error(("host", "bind"), f"{inv.host.bind} is not a loopback address; {hint}")
    for name, svc in inv.managed(disabled=True).items():
        if svc.bind is None or _is_loopback(svc.bind):
            continue
        if not _private(inv, svc.bind):
            yield src.error(("services", name, "bind"), f"{svc.bind} is not a loopback address; {hint}")
            continue
        # Inside the private network: other hosts reach it, so it must check a key.
        problem = kind_of(svc).remote_bind_problem(svc)
        if problem:
            yield src.error(("services", name, "bind"), f"{svc.bind} {problem}")


SECRET_HINT = ("secrets must not be inline (unit files are world-readable and argv is public): put it in "
               "a 0600 file listed in environment_files")


def _extra_args(inv: Inventory, src: Source) -> Iterator[InputError]:
    from labctl.inventory.layout import Layout

    layout = Layout.of(inv)
    for name, svc in inv.managed(disabled=True).items():
        owned = kind_of(svc).owned_flags(inv, name, layout)
        for i, arg in enumerate(svc.extra_args):
            flag = arg.split("=", 1)[0]
            if flag in owned:
                yield src.error(("services", name, "extra_args", i),
                                f"{flag} is set by labctl from the typed field; set that field instead")


def _environment(inv: Inventory, src: Source) -> Iterator[InputError]:
    for name, svc in inv.managed(disabled=True).items():
        for var, fields in kind_of(svc).owned_environment.items():
            if var in svc.environment:
                yield src.error(("services", name, "environment", var), f"{var} is set by labctl from {fields}")


def _models(inv: Inventory, src: Source) -> Iterator[InputError]:
    """Declared models: one default at most, one file each (nothing secret in a source:
    secret_problems)."""
    defaults = [name for name, m in inv.models.items() if m.default]
    for name in defaults[1:]:
        yield src.error(("models", name, "default"), f"only one model can be the default; {defaults[0]} already is")
    files: dict[str, str] = {}
    for name, model in inv.models.items():
        base = ("models", name)
        file = model.file_name(name)
        if file == inv.host.current_link:
            yield src.error(base + ("file",), f"{file} is host.current_link, the switchable link itself; "
                                              "name the model file something else")
        elif file in files:
            yield src.error(base + ("file",), f"{file} is already the file of models.{files[file]}")
        files.setdefault(file, name)


# --- secrets, wherever they are pasted ---------------------------------------------------

PIP_SECRET_HINT = ("secrets must not be inline (unit files are world-readable and argv is public): put it in "
                   "the manager's environment (pip reads PIP_* from it)")
LITELLM_SECRET_HINT = "secrets go in LiteLLM's settings only as os.environ/VAR, the value in a 0600 environment file"
INVENTORY_SECRET_HINT = ("secrets do not belong in the inventory (it is kept in git and rendered into world-readable "
                         "unit files, argv and configs): reference one from a 0600 file, {env_file: PATH, var: NAME}")
ENV_REF = litellm_env.REF
LITELLM_SECTIONS = ("litellm_settings", "router_settings", "general_settings", "litellm_params", "model_info")
# What a value is called and what the operator does instead, by the field it is under;
# any other field gets ("value", INVENTORY_SECRET_HINT).
SECRET_WORDING: dict[str, tuple[str, str]] = {
    "extra_args": ("value", SECRET_HINT),
    "environment": ("value", SECRET_HINT),
    "pip_env": ("value", PIP_SECRET_HINT),
    "pip": ("spec", "put index credentials in pip's own config or netrc, not in the inventory"),
    "url": ("URL", "keys come from the environment (HF_TOKEN), not the inventory"),
    "api_base": ("URL", "give the key as api_key, by reference"),
    "index_url": ("URL", "put index credentials in pip's own config or netrc, not in the inventory"),
    **{section: ("value", LITELLM_SECRET_HINT) for section in LITELLM_SECTIONS},
}
# Mappings whose keys name what their values hold: a secret-sounding name is a secret
# pasted there, whatever the value looks like (an environment variable's name; the
# nearest key of a LiteLLM setting).
NAMED_FIELDS = ("environment", "pip_env", *LITELLM_SECTIONS)
# Fields public by shape: a hex digest there (a sha256, an image's @sha256:, a Hugging Face
# commit in a revision, a URL or a cache path, an Ollama blob's sha256-... name) is what it
# looks like, not a key. Only that part is exempt; the value rules read the rest.
# (The fields say so themselves: labctl.fields.PublicByShape in their type.)
HEX_DIGEST = re.compile(r"(?<![A-Za-z0-9])(sha256[-:])?([0-9a-f]{64}|[0-9a-f]{40})(?![A-Za-z0-9])")


def _marked(info: object, mark: type) -> bool:
    """Whether a field's type carries ``mark`` (labctl.fields' PublicByShape, CommandLine): in
    its metadata, in an Annotated, or inside the Annotated of an ``X | None``."""
    from typing import get_args

    def walk(annotation: object) -> bool:
        return isinstance(annotation, mark) or any(walk(arg) for arg in get_args(annotation))

    return walk(getattr(info, "annotation", None)) or any(isinstance(m, mark) for m in getattr(info, "metadata", ()))


def secret_problems(inv: Inventory, src: Source) -> list[InputError]:
    """Every string of the validated inventory, mapping keys included, through the secret
    rules (labctl.secretscan): a secret pasted anywhere reaches a unit file, argv, a rendered
    config or a terminal. One walk over the model tree, so a new field is covered by itself;
    one error per location."""
    found: dict[tuple, str] = {}
    for leaf in _string_leaves(inv, (), ("", ""), None, None):
        # The value as validated, and as the operator wrote it: normalising a path can hide
        # a shape (https://u:p@h/x as a file name becomes https:/u:p@h/x).
        raw = _raw(src.data, leaf.loc) if not leaf.is_key else None
        for text in (leaf.text, raw) if isinstance(raw, str) and raw != leaf.text else (leaf.text,):
            message = _secret_message(replace(leaf, text=text))
            if message and leaf.loc not in found:
                found[leaf.loc] = message
    return [src.error(loc, message) for loc, message in found.items()]


def _raw(data: object, loc: tuple) -> object:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data


@dataclass(frozen=True)
class _Leaf:
    loc: tuple
    field: tuple[str, str]  # (model, field) the string is under
    public: bool  # a hex digest there is no key (labctl.fields.PublicByShape)
    argv: bool  # words of a command line (labctl.fields.CommandLine)
    key: str | None  # the nearest mapping key above it
    before: str | None  # the item before it in its list (an argv's flag)
    text: str
    is_key: bool = False


def _secret_message(leaf: _Leaf) -> str | None:
    name = leaf.field[1]
    noun, hint = SECRET_WORDING.get(name, ("value", INVENTORY_SECRET_HINT))
    text = HEX_DIGEST.sub(" ", leaf.text) if leaf.public else leaf.text
    if leaf.is_key:
        reason = secretscan.value_problem(text)
        return reason and f"the name {reason}; {hint}"
    reference = name in LITELLM_SECTIONS and ENV_REF in text
    if reference:
        # What LiteLLM reads for the reference is _passthrough's to judge; the text before it is read here.
        text = text[:text.index(ENV_REF)]
    elif name in NAMED_FIELDS and leaf.key is not None and secretscan.name_is_secret(leaf.key):
        return (f"{leaf.key} names a secret; {hint}" if name in ("environment", "pip_env")
                else f"its name says it holds a secret; {hint}")
    if leaf.argv:
        reason = secretscan.arg_problem(text, leaf.before)
        return reason and f"{reason}; {hint}"
    reason = secretscan.value_problem(text)
    return reason and f"the {noun} {reason}; {hint}"


def _string_leaves(node: object, loc: tuple, field: tuple[str, str], key: str | None,
                   before: str | None, public: bool = False, argv: bool = False) -> Iterator[_Leaf]:
    """Every string in the inventory's model tree: field values, list items, mapping keys
    and values, each with what its field's type says of it."""
    if isinstance(node, BaseModel):
        for name, info in type(node).model_fields.items():
            yield from _string_leaves(getattr(node, name), loc + (name,), (type(node).__name__, name), None, None,
                                      _marked(info, PublicByShape), _marked(info, CommandLine))
    elif isinstance(node, dict):
        for k, value in node.items():
            yield _Leaf(loc + (k,), field, public, argv, key, None, str(k), is_key=True)
            yield from _string_leaves(value, loc + (k,), field, str(k), None, public, argv)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            previous = node[i - 1] if i else None
            yield from _string_leaves(value, loc + (i,), field, key, previous if isinstance(previous, str) else None,
                                      public, argv)
    elif isinstance(node, str):
        yield _Leaf(loc, field, public, argv, key, before, node)


def _hardening(inv: Inventory, src: Source) -> Iterator[InputError]:
    from labctl.encode import PATH_WORD_UNSAFE, EncodeError
    from labctl.inventory.layout import Layout
    from labctl.render.units import writable_sources

    layout = Layout.of(inv)
    for name, svc in inv.managed(disabled=True).items():
        lim = inv.limits_of(svc)
        if lim.memory_high and lim.memory_max and mem_bytes(lim.memory_high) > mem_bytes(lim.memory_max):
            loc = ("services", name, "limits", "memory_high") if svc.limits and svc.limits.memory_high else \
                ("defaults", "limits", "memory_high")
            yield src.error(loc, f"memory_high {lim.memory_high} is above memory_max {lim.memory_max}; "
                                 "throttling would never start before the OOM kill")
        if not inv.hardened(svc):
            continue
        try:
            sources = writable_sources(inv, name, svc, layout)
        except EncodeError:
            continue  # OLLAMA_MODELS is no path: _environment says so
        seen: set[str] = set()
        for path, said, loc in sources:
            if path in seen or not PATH_WORD_UNSAFE & set(path):
                continue
            seen.add(path)
            # A ~/ path whose own text is clean got the character from host.home.
            where = loc if PATH_WORD_UNSAFE & set(said) else ("host", "home")
            yield src.error(where, f"{path} holds whitespace, a quote or a backslash, which a hardened unit's "
                                   "ReadWritePaths= cannot list; rename it, or set hardening: false")


def _gateways(inv: Inventory, src: Source) -> Iterator[InputError]:
    enabled = list(inv.gateways())
    if len(enabled) > 1:
        yield src.error(("services", enabled[1]), f"only one enabled litellm gateway is supported "
                                                  f"(also: {enabled[0]})")


def _monitoring(inv: Inventory, src: Source) -> Iterator[InputError]:
    """The operator's scrape jobs, rule files and dashboards: names that cannot shadow
    labctl's, and files that labctl can install or promtool read without publishing
    anything (labctl.render.operator_files, whose checks the renderer runs again)."""
    from labctl.render import operator_files as opfiles
    from labctl.render.monitoring import scrape_jobs

    mon = inv.monitoring
    if mon.gpu_exporter.enabled and not inv.host.gpu:
        yield src.error(("monitoring", "gpu_exporter", "enabled"),
                        "host.gpu is false: there is no GPU for nvidia-smi to report on this host")
    seen: dict[str, int] = {}
    ours = {job.name for job in scrape_jobs(inv)[0]}
    for i, job in enumerate(mon.scrape_jobs):
        loc = ("monitoring", "scrape_jobs", i, "name")
        if job.name in ours:
            yield src.error(loc, f"job {job.name!r} is one of labctl's own (pick another name)")
        elif job.name in seen:
            yield src.error(loc, f"job {job.name!r} is already defined at scrape_jobs[{seen[job.name]}]")
        seen.setdefault(job.name, i)
        for k, rule in enumerate(job.relabel_configs + job.metric_relabel_configs):
            if rule.action in ("replace", "hashmod") and rule.target_label is None:
                section = "relabel_configs" if k < len(job.relabel_configs) else "metric_relabel_configs"
                index = k if k < len(job.relabel_configs) else k - len(job.relabel_configs)
                yield src.error(("monitoring", "scrape_jobs", i, section, index),
                                f"action {rule.action} needs target_label")
    if not mon.enabled:
        return
    for field_name, check in opfiles.CHECKS.items():
        for i, path in enumerate(getattr(mon, field_name)):
            try:
                check(inv.host.expand(path))
            except opfiles.Refused as exc:
                yield src.error(("monitoring", field_name, i), str(exc))


def _images(inv: Inventory, src: Source) -> Iterator[InputError]:
    mon = inv.monitoring
    for part, image in (("prometheus", mon.prometheus.image), ("grafana", mon.grafana.image),
                        ("node_exporter", mon.node_exporter.image), ("gpu_exporter", mon.gpu_exporter.image)):
        tag = image.split("@", 1)[0].rsplit(":", 1)[-1]
        if tag == "latest":
            yield src.error(("monitoring", part, "image"), "pin the image to a version tag, not :latest")


# --- --check-files: the inventory against this machine's files ------------------------


def file_problems(inv: Inventory, src: Source) -> list[InputError]:
    """The inventory against this machine's files (``--check-files``, doctor, pre-flight)."""
    return list(_files(inv, src))


def _files(inv: Inventory, src: Source) -> Iterator[InputError]:
    for name, svc in inv.managed().items():
        base = ("services", name)
        kind = kind_of(svc)
        for loc, path in kind.executables(inv, name, svc):
            yield from _executable(src, base + loc, Path(path))
        for i, env_file in enumerate(svc.environment_files):
            path = Path(inv.host.expand(env_file))
            if not path.is_file():
                yield src.error(base + ("environment_files", i), f"{path} does not exist")
        model = kind.model_file(inv, svc)
        if model is not None:
            yield from _model_file(inv, src, name, svc, Path(model))


def _executable(src: Source, loc: tuple, path: Path) -> Iterator[InputError]:
    if not path.exists():
        yield src.error(loc, f"{path} does not exist")
    elif not path.is_file() or not os.access(path, os.X_OK):
        yield src.error(loc, f"{path} is not an executable file")


def pulled_later(inv: Inventory, path: Path) -> bool:
    """Whether ``path`` is missing now but will be there once the declared models are pulled
    (``labctl up`` pulls them first): a declared model's file, or current.gguf while a
    default model is declared or the link points at a declared model."""
    if path.exists():
        return False
    if str(path) == inv.host.current_path:
        if path.is_symlink():  # dangling: fine if it points at a declared model not yet fetched
            return os.path.realpath(path) in {inv.model_file(name) for name in inv.models}
        return inv.default_model() is not None
    return str(path) in {inv.model_file(name) for name in inv.models}


def _model_file(inv: Inventory, src: Source, name: str, svc: Listener, path: Path) -> Iterator[InputError]:
    """The GGUF a service loads: there (or pulled by up first), current.gguf a link inside
    the models dirs, a readable header, a context the model was trained for."""
    from labctl.host.modelfiles import inside_models_dir, real_path, roots_text  # models imports the renderers

    loc = ("services", name, "model")
    if pulled_later(inv, path):
        return  # a declared model `labctl up` fetches (and links) before it checks files
    if str(path) == inv.host.current_path:
        if not path.is_symlink():
            what = "is not a symlink" if path.exists() else "does not exist"
            yield src.error(loc, f"{path} {what}; point it at a model with 'labctl model switch FILE'")
            return
        target = real_path(path)
        if target is None:
            yield src.error(loc, f"{path} does not resolve (a dangling link or a loop); point it at a model "
                                 "with 'labctl model switch FILE'")
            return
        # The same rule as `labctl model switch` (labctl.host.modelfiles.inside_models_dir).
        if not inside_models_dir(inv, path):
            yield src.error(loc, f"{path} resolves to {target}, outside {roots_text(inv)}")
            return
    if not path.exists():
        yield src.error(loc, f"model file {path} does not exist")
        return
    problem = gguf_header.problem(path)
    if problem:
        yield src.error(loc, f"{path}: {problem}")
        return
    context = kind_of(svc).context(svc)
    trained = gguf_header.context_length(path)
    if context and trained and context[1] > trained:
        yield src.error(("services", name, context[0]), f"{context[1]} exceeds the model's trained context length "
                                                        f"{trained}")
